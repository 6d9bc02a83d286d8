// go_update: a live update from Go, which makes raw system calls even when
// dynamically linked, so no LD_PRELOAD shim can reach it; `luofs run` serves it
// through the seccomp supervisor.
//
//	go_update DEVICE stage1 NAME   preserve a memfd holding a message in session
//	                               NAME, print "ready", hold the session until killed
//	go_update DEVICE stage2 NAME   in the next kernel: retrieve it, check, finish
//
// Prints one line per check and "N failed"; exits 0 iff all passed.
package main

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

const (
	createSession   = 0xBA00
	retrieveSession = 0xBA01
	preserveFd      = 0xBA40
	retrieveFd      = 0xBA41
	finish          = 0xBA42
	token           = 11
)

var message = []byte("preserved by a Go program\n")

// memfd_create's number: Go 1.19's syscall package does not name it.
func sysMemfdCreate() uintptr {
	if runtime.GOARCH == "arm64" {
		return 279
	}
	return 319 // amd64
}

type sessionArg struct { // struct liveupdate_ioctl_{create,retrieve}_session
	size uint32
	fd   int32
	name [64]byte
}

type fdArg struct { // struct liveupdate_session_{preserve,retrieve}_fd
	size  uint32
	fd    int32
	token uint64
}

type finishArg struct { // struct liveupdate_session_finish
	size     uint32
	reserved uint32
}

var failed int

func check(ok bool, what string, err error) {
	if ok {
		fmt.Println("ok  ", what)
		return
	}
	fmt.Println("FAIL", what, err)
	failed++
}

func ioctl(fd int, cmd uintptr, arg unsafe.Pointer) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), cmd, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

func session(dev int, cmd uintptr, name string) (int, error) {
	arg := sessionArg{size: uint32(unsafe.Sizeof(sessionArg{}))}
	copy(arg.name[:], name)
	err := ioctl(dev, cmd, unsafe.Pointer(&arg))
	return int(arg.fd), err
}

func stage1(dev int, name string) {
	s, err := session(dev, createSession, name)
	check(err == nil, "CREATE_SESSION", err)
	_, err = session(dev, createSession, name)
	check(err == syscall.EEXIST, "CREATE_SESSION of the same name -> EEXIST", err)
	memName := []byte("go-update\x00")
	mem, _, errno := syscall.Syscall(sysMemfdCreate(), uintptr(unsafe.Pointer(&memName[0])), 0, 0)
	check(errno == 0, "memfd_create", errno)
	_, err = syscall.Write(int(mem), message)
	check(err == nil, "write the message", err)
	arg := fdArg{size: uint32(unsafe.Sizeof(fdArg{})), fd: int32(mem), token: token}
	err = ioctl(s, preserveFd, unsafe.Pointer(&arg))
	check(err == nil && arg.fd == int32(mem), "PRESERVE_FD the memfd", err)
	fmt.Printf("%d failed\nready\n", failed)
	if failed == 0 {
		for { // hold the session open until the test ends us after the kexec
			time.Sleep(time.Hour)
		}
	}
}

func stage2(dev int, name string) {
	s, err := session(dev, retrieveSession, name)
	check(err == nil, "RETRIEVE_SESSION in the next kernel", err)
	arg := fdArg{size: uint32(unsafe.Sizeof(fdArg{})), token: token}
	err = ioctl(s, retrieveFd, unsafe.Pointer(&arg))
	check(err == nil && arg.fd >= 0, "RETRIEVE_FD", err)
	got := make([]byte, 64)
	n, err := syscall.Pread(int(arg.fd), got, 0)
	check(err == nil && bytes.Equal(got[:n], message), "the memfd's bytes came through", err)
	fin := finishArg{size: uint32(unsafe.Sizeof(finishArg{}))}
	err = ioctl(s, finish, unsafe.Pointer(&fin))
	check(err == nil, "FINISH", err)
	fmt.Printf("%d failed\n", failed)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go_update DEVICE stage1|stage2 NAME")
		os.Exit(2)
	}
	dev, err := syscall.Open(os.Args[1], syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	check(err == nil, "open the device", err)
	switch os.Args[2] {
	case "stage1":
		stage1(dev, os.Args[3])
	case "stage2":
		stage2(dev, os.Args[3])
	default:
		os.Exit(2)
	}
	if failed != 0 {
		os.Exit(1)
	}
}
