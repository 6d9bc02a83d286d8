//! rust_update: a live update from Rust with raw system calls (as rustix makes
//! them): no libc ioctl() for an LD_PRELOAD shim to catch, so `luofs run` serves
//! it through the seccomp supervisor. x86-64 only (the syscall instruction).
//!
//!   rust_update DEVICE stage1 NAME   preserve a memfd holding a message in session
//!                                    NAME, print "ready", hold the session until killed
//!   rust_update DEVICE stage2 NAME   in the next kernel: retrieve it, check, finish
//!
//! Prints one line per check and "N failed"; exits 0 iff all passed.
use std::arch::asm;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::{env, process, thread};

const SYS_IOCTL: usize = 16;
const SYS_MEMFD_CREATE: usize = 319;
const CREATE_SESSION: usize = 0xBA00;
const RETRIEVE_SESSION: usize = 0xBA01;
const PRESERVE_FD: usize = 0xBA40;
const RETRIEVE_FD: usize = 0xBA41;
const FINISH: usize = 0xBA42;
const TOKEN: u64 = 13;
const MESSAGE: &[u8] = b"preserved by a Rust program\n";

#[repr(C)]
struct SessionArg { size: u32, fd: i32, name: [u8; 64] }
#[repr(C)]
struct FdArg { size: u32, fd: i32, token: u64 }
#[repr(C)]
struct FinishArg { size: u32, reserved: u32 }

/// One system call, straight to the kernel: Ok(return value) or Err(errno).
fn raw_syscall(nr: usize, a: usize, b: usize, c: usize) -> Result<usize, isize> {
    let ret: isize;
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a, in("rsi") b,
             in("rdx") c, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if ret < 0 && ret > -4096 { Err(-ret) } else { Ok(ret as usize) }
}

fn ioctl<T>(fd: i32, cmd: usize, arg: &mut T) -> Result<usize, isize> {
    raw_syscall(SYS_IOCTL, fd as usize, cmd, arg as *mut T as usize)
}

struct Checks { failed: u32 }

impl Checks {
    fn check<T: std::fmt::Debug>(&mut self, ok: bool, what: &str, detail: T) {
        if ok { println!("ok   {}", what); } else { println!("FAIL {} {:?}", what, detail); self.failed += 1; }
    }
}

fn session(dev: i32, cmd: usize, name: &str) -> Result<i32, isize> {
    let mut arg = SessionArg { size: std::mem::size_of::<SessionArg>() as u32, fd: -1, name: [0; 64] };
    arg.name[..name.len()].copy_from_slice(name.as_bytes());
    ioctl(dev, cmd, &mut arg).map(|_| arg.fd)
}

fn stage1(c: &mut Checks, dev: i32, name: &str) {
    let s = session(dev, CREATE_SESSION, name);
    c.check(s.is_ok(), "CREATE_SESSION", s);
    let again = session(dev, CREATE_SESSION, name);
    c.check(again == Err(17), "CREATE_SESSION of the same name -> EEXIST", again);
    let mem = raw_syscall(SYS_MEMFD_CREATE, b"rust-update\0".as_ptr() as usize, 0, 0);
    c.check(mem.is_ok(), "memfd_create", mem);
    let mut file = unsafe { File::from_raw_fd(mem.unwrap_or(0) as i32) };
    c.check(file.write_all(MESSAGE).is_ok(), "write the message", ());
    let mut arg = FdArg { size: 16, fd: file.as_raw_fd(), token: TOKEN };
    let r = ioctl(s.unwrap_or(-1), PRESERVE_FD, &mut arg);
    c.check(r.is_ok() && arg.fd == file.as_raw_fd(), "PRESERVE_FD the memfd", r);
    println!("{} failed\nready", c.failed);
    if c.failed == 0 {
        loop { thread::park(); } // hold the session open until the test ends us after the kexec
    }
}

fn stage2(c: &mut Checks, dev: i32, name: &str) {
    let s = session(dev, RETRIEVE_SESSION, name);
    c.check(s.is_ok(), "RETRIEVE_SESSION in the next kernel", s);
    let mut arg = FdArg { size: 16, fd: -1, token: TOKEN };
    let r = ioctl(s.unwrap_or(-1), RETRIEVE_FD, &mut arg);
    c.check(r.is_ok() && arg.fd >= 0, "RETRIEVE_FD", r);
    let mut got = Vec::new();
    if arg.fd >= 0 {
        let mut file = unsafe { File::from_raw_fd(arg.fd) };
        let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_end(&mut got));
    }
    c.check(got == MESSAGE, "the memfd's bytes came through", String::from_utf8_lossy(&got));
    let mut fin = FinishArg { size: 8, reserved: 0 };
    let r = ioctl(s.unwrap_or(-1), FINISH, &mut fin);
    c.check(r.is_ok(), "FINISH", r);
    println!("{} failed", c.failed);
}

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: rust_update DEVICE stage1|stage2 NAME");
        process::exit(2);
    }
    let mut c = Checks { failed: 0 };
    let dev = OpenOptions::new().read(true).write(true).open(&args[1]);
    c.check(dev.is_ok(), "open the device", &dev);
    let dev = dev.map(|f| { let fd = f.as_raw_fd(); std::mem::forget(f); fd }).unwrap_or(-1);
    match args[2].as_str() {
        "stage1" => stage1(&mut c, dev, &args[3]),
        "stage2" => stage2(&mut c, dev, &args[3]),
        _ => process::exit(2),
    }
    process::exit(if c.failed == 0 { 0 } else { 1 });
}
