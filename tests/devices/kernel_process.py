"""A kernel process for test_processes.py: boots devices (cold or from a hand-over) over a
real device socket, runs for a while, then live-updates or stops. Prints one JSON line.

    python kernel_process.py RAM_FD DEVICE_FD '{"root": [phys, size] | null, "run": s,
                                               "request": [...], "final": bool}'
"""

import json
import socket
import sys
import time
from collections import defaultdict

from devices.drivers import DeviceDrivers, incoming_images, publish
from devices.transport import SocketTransport
from kho import Handover, IncomingHandover, PhysicalMemory


def main() -> None:
    ram_fd, device_fd, options = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    memory = PhysicalMemory.adopt(ram_fd)
    incoming = None
    if options["root"]:
        incoming = IncomingHandover.load(memory, *options["root"])
    handover = Handover(memory)
    seen = defaultdict(list)  # (label, epoch) → consumed seqs

    def on_records(dev, seqs):
        seen[f"{dev.label}/{dev.driver_data.epoch}"].extend(seqs)

    transport = SocketTransport(socket.socket(fileno=device_fd))
    drivers = DeviceDrivers(transport, memory, handover.preserved, on_records=on_records)
    report = drivers.boot(incoming_images(incoming),
                          incoming.preserved if incoming else None)
    for label in options["request"]:
        drivers.layer.set_requested(drivers.tree.by_label(label), True)
    time.sleep(options["run"])
    out = {"report": report}
    if options["final"]:
        for dev in drivers.dma_devices():
            drivers.client.simple("device-stop", dev.path)
        drivers.stop_service()
        drivers.service_all()
        out["irq_consumed"] = {d.label: d.driver_data.counters["irq_consumed"]
                               for d in drivers.dma_devices()}
        drivers.close()
    else:
        publish(handover, drivers.freeze())
        out["root"] = list(handover.finalize())
        out["preserved"] = drivers.shutdown()
    out["seen"] = {key: [seqs[0], seqs[-1], len(seqs)] for key, seqs in seen.items() if seqs}
    out["contiguous"] = all(seqs == list(range(seqs[0], seqs[0] + len(seqs)))
                            for seqs in seen.values() if seqs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
