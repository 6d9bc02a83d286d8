"""A sample LUO image and helpers to find its blocks, for the kho LUO tests."""

from kho.fdt_blob import get_u64, parse_fdt
from kho.luo_image import FileImage, FlbImage, LuoImage, SessionImage

IMAGE = LuoImage(
    liveupdate_number=7,
    sessions=[SessionImage(b"vm-1", [FileImage("memfd-v2", 0x5000, 1), FileImage("memfd-v2", 0x6000, 0)]),
              SessionImage(b"empty"),
              SessionImage(b"vm-2", [FileImage("iommufd-v1", 3, 2**64 - 1)])],
    flbs=[FlbImage("iommu-core-v1", 0x9000, 2)],
    subsystems={"kvm": 0x1234, "vfio,pci": 0},
)


def headers(blob):
    """The session and FLB block addresses in a LUO FDT."""
    root = parse_fdt(blob, "test").root
    return (get_u64(root.get_subnode("luo-session"), "luo-session-header", "test"),
            get_u64(root.get_subnode("luo-flb"), "luo-flb-header", "test"))
