"""Requests between a kernel and the machine over a real socket, fds by SCM_RIGHTS."""

import os
import socket

import pytest

from devices.drivers import DeviceDrivers
from devices.errors import DeviceError
from devices.host import DeviceHost
from devices.ram import RamView
from devices.transport import DeviceClient, SocketTransport, TransportError, start_server
from kho import Handover, PhysicalMemory

MiB = 1 << 20


@pytest.fixture
def wired():
    """(machine RAM, host, kernel-side transport) joined by a SOCK_SEQPACKET pair."""
    ram = PhysicalMemory(16 * MiB)
    host = DeviceHost(RamView(os.dup(ram.fd)), "bridge0;dma0@bridge0:rate=0")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = start_server(host, theirs)
    transport = SocketTransport(ours, timeout=10)
    yield ram, host, transport, server
    transport.close()
    server.join(10)
    host.close()
    host.ram.close()
    ram.close()


def test_list_attach_and_errors(wired):
    _, host, transport, _ = wired
    client = DeviceClient(transport)
    configs = client.list()
    assert [c.label for c in configs] == ["bridge0", "dma0"]
    dma0 = configs[1].path
    client.simple("device-reset", dma0)
    reply, fds = client.call("device-attach", dma0)
    assert len(fds) == 2 and reply["pending"] == 0
    bar_fd, irq_fd = fds
    assert os.fstat(bar_fd).st_size == 4096
    engine = host.engine("dma0")
    engine._raise_irq_locked()  # an interrupt reaches our copy of the eventfd
    assert os.eventfd_read(irq_fd) == 1
    os.close(bar_fd)
    os.close(irq_fd)
    with pytest.raises(DeviceError) as e:
        client.call("device-start", dma0)  # nothing programmed
    assert e.value.errno == 22
    with pytest.raises(DeviceError) as e:
        client.simple("device-info", "pci0000:00/0000:09:00.0")
    assert e.value.errno == 19


def test_a_kernel_over_the_socket(wired):
    ram, host, transport, _ = wired
    memory = PhysicalMemory.adopt(os.dup(ram.fd))
    seen = []
    drivers = DeviceDrivers(transport, memory, Handover(memory).preserved,
                            on_records=lambda dev, seqs: seen.extend(seqs), irq_thread=False)
    report = drivers.boot()
    assert len(report["probed"]) == 2
    host.engine("dma0").produce(300)
    drivers.service_all()
    assert seen == list(range(300))
    drivers.close()
    memory.close()


def test_the_server_ends_when_the_kernel_goes(wired):
    _, _, transport, server = wired
    transport.close()
    server.join(10)
    assert not server.is_alive()


def test_a_machine_that_went_away_is_eio():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    transport = SocketTransport(ours, timeout=1)
    with pytest.raises(TransportError):
        transport.request({"op": "device-list"})
    with pytest.raises(DeviceError) as e:
        DeviceClient(transport).list()
    assert e.value.errno == 5
    transport.close()
