#!/bin/sh
# Test plugin for ductile's runner tests, in plain POSIX sh.
req=$(cat)
case "$req" in
*'"mode":"hang"'*)
    pidfile=$(printf '%s' "$req" | sed -n 's/.*"pidfile":"\([^"]*\)".*/\1/p')
    sleep 1000 &
    echo "$$ $!" > "$pidfile.tmp"
    mv "$pidfile.tmp" "$pidfile"
    wait
    ;;
*)
    printf '{"status":"ok","result":"sh ok","events":[{"type":"sh.done","payload":{"shell":"sh"}}]}\n'
    ;;
esac
