"""luofs: the Linux Live Update Orchestrator and Kexec HandOver, emulated in user space."""

__version__ = "0.1.0"
