"""
C{twistd ductile}: options and service construction.

The config is loaded, plugins discovered and pipelines compiled while the
options are parsed, so a bad config stops twistd with the loader's message
(a usage error) before anything starts or daemonizes.
"""
from __future__ import annotations

from twisted.application import service
from twisted.python import usage


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run a ductile instance. PATH is a config file or a directory holding config.yaml; "
        "without it $DUCTILE_CONFIG_DIR, ~/.config/ductile, then /etc/ductile are tried."
    )
    optParameters = [
        ["config", "c", None, "Config file or directory holding config.yaml."],
    ]

    def postOptions(self) -> None:
        from ductile.admin import AdminConfigError, check_manhole
        from ductile.config import ConfigError, load_config
        from ductile.instance import InstanceError, build_instance
        from ductile.logging import set_level
        from ductile.store.lock import StateLock, StateLocked

        try:
            config = load_config(self["config"])
            self["instance"] = build_instance(config)
            if config.manhole is not None:
                check_manhole(config.manhole)
            # Taken before twistd daemonizes, so a second instance on the same
            # state database stops here with a message.
            self["lock"] = StateLock(config.state.path)
            self["lock"].acquire()
        except (ConfigError, InstanceError, AdminConfigError, StateLocked) as e:
            raise usage.UsageError(str(e)) from None
        set_level(config.service.log_level)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from ductile.service import DuctileService, install_sighup

    instance = options["instance"]
    top = service.MultiService()
    ductile = DuctileService(instance, reactor, lock=options["lock"], exit_on_start_failure=True)
    ductile.setServiceParent(top)
    # SIGHUP (systemctl reload) reloads the config; installed once the
    # reactor runs, after Twisted's own signal handlers.
    reactor.addSystemEventTrigger("after", "startup", install_sighup, reactor, ductile)
    return top
