"""The reference row of `bench:consume`: oslo.messaging's own notification listener draining the
same Glance bodies from a queue filled beforehand, as an OpenStack service would consume them.

Run by bench/consume.ts with Debian's python3-oslo.messaging (which the lab installs):

    GQE_OSLO_LISTENER='{"url": "rabbit://guest:guest@127.0.0.1:5672/", "exchange": "x",
                        "topic": "q", "count": 20000}' /usr/bin/python3 bench/oslo-listener.py

The listener binds queue `<topic>.info` to `exchange` (the bench declares it first, as oslo
would, so that the bodies wait in it), runs oslo's default executor (threading) with oslo's
defaults (no prefetch limit, an ack per message after the endpoint returns), and prints one JSON
line: the seconds from the listener's start to the `count`-th message handled, and the CPU this
process spent. The arguments come in the environment, where `ps` does not show the password.
"""
import json
import os
import resource
import threading
import time

from oslo_config import cfg
import oslo_messaging


class Counter:
    """The endpoint: counts notifications of every priority (the bodies have some at ERROR, which
    oslo dispatches to `error`), as a listener that only looks at them."""

    def __init__(self, count):
        self.count = count
        self.handled = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.handled += 1
            if self.handled >= self.count:
                self.done.set()
        return oslo_messaging.NotificationResult.HANDLED

    audit = debug = warn = error = critical = sample = info


def main():
    args = json.loads(os.environ["GQE_OSLO_LISTENER"])
    conf = cfg.ConfigOpts()
    conf([], project="gqe-bench")
    transport = oslo_messaging.get_notification_transport(conf, url=args["url"])
    target = oslo_messaging.Target(topic=args["topic"], exchange=args["exchange"])
    counter = Counter(args["count"])
    listener = oslo_messaging.get_notification_listener(transport, [target], [counter], executor="threading")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    listener.start()
    finished = counter.done.wait(timeout=args.get("timeoutSeconds", 600))
    seconds = time.monotonic() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    listener.stop()
    listener.wait()
    transport.cleanup()
    if not finished:
        raise SystemExit(f"oslo-listener: handled {counter.handled} of {counter.count} messages in {seconds:.0f} s")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(json.dumps({"seconds": seconds, "cpuSeconds": cpu, "handled": counter.handled}))


if __name__ == "__main__":
    main()
