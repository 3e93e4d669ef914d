"""Running under systemd: the pieces ``agent run`` uses to be a supervised service.

- :mod:`agent.service.notify`: the ``sd_notify`` datagram protocol (READY, STATUS,
  WATCHDOG, STOPPING), a no-op when the agent is not started by systemd;
- :mod:`agent.service.heartbeat`: a heartbeat each long-running thread stamps from its own
  loop, and the check that finds a thread dead or stuck;
- :mod:`agent.service.watchdog`: pings systemd's watchdog only while every heartbeat is
  fresh;
- :mod:`agent.service.lock`: one agent per pole (an exclusive lock on the state directory);
- :mod:`agent.service.runs`: starts and the last exit's reason, kept in the state
  directory, for health (and the ``ExecStopPost=`` hook that adds systemd's view).
"""
