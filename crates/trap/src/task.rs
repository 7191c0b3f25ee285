//! The trapped threads an engine has met: a pidfd and the memory file of each, opened
//! once so that a trapped call costs no open(2).
//!
//! Both handles name one task for good: if its thread id is recycled, the pidfd fails
//! with ESRCH and the memory file reads nothing, and the entry is opened afresh. An
//! entry is only ever (re)opened while a notification from that thread is pending and
//! checked valid afterwards, so it cannot be opened on an impostor.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use ax_core::Errno;
use ax_sys::pidfd::Pidfd;
use ax_sys::seccomp::Listener;

/// Past this many threads the cache starts over (threads come and go; this bounds the
/// fds held for ones that are gone).
const MAX_TASKS: usize = 64;

pub struct Task {
    pidfd: Pidfd,
    mem: File,
}

impl Task {
    fn open(tid: i32) -> io::Result<Task> {
        Ok(Task {
            pidfd: Pidfd::open_thread(tid)?,
            mem: OpenOptions::new().read(true).write(true).open(format!("/proc/{tid}/mem"))?,
        })
    }
}

#[derive(Default)]
pub struct Tasks {
    map: HashMap<i32, Task>,
}

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Tasks {
    fn entry(&mut self, tid: i32, id: u64, listener: &Listener, fresh: bool) -> Result<&Task, Errno> {
        if fresh {
            self.map.remove(&tid);
        }
        if !self.map.contains_key(&tid) {
            if self.map.len() >= MAX_TASKS {
                self.map.clear();
            }
            let task = Task::open(tid).map_err(errno)?;
            if !listener.id_valid(id) {
                return Err(libc::ESRCH);
            }
            self.map.insert(tid, task);
        }
        Ok(&self.map[&tid])
    }

    /// Duplicates descriptor `fd` of thread `tid` (the app's own socket).
    pub fn get_fd(&mut self, tid: i32, id: u64, listener: &Listener, fd: RawFd) -> Result<OwnedFd, Errno> {
        match self.entry(tid, id, listener, false)?.pidfd.get_fd(fd) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                self.entry(tid, id, listener, true)?.pidfd.get_fd(fd).map_err(errno)
            }
            r => r.map_err(errno),
        }
    }

    /// Reads the app's memory; any failure is the app's bad pointer (EFAULT), once a
    /// stale handle (the thread exec'd) has been ruled out.
    pub fn read(&mut self, tid: i32, id: u64, listener: &Listener, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        if self.entry(tid, id, listener, false)?.mem.read_exact_at(buf, addr).is_ok() {
            return Ok(());
        }
        self.entry(tid, id, listener, true)?.mem.read_exact_at(buf, addr).map_err(|_| libc::EFAULT)
    }

    /// Writes into the app's memory, with the same fault rules as [`Tasks::read`].
    pub fn write(&mut self, tid: i32, id: u64, listener: &Listener, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if self.entry(tid, id, listener, false)?.mem.write_all_at(data, addr).is_ok() {
            return Ok(());
        }
        self.entry(tid, id, listener, true)?.mem.write_all_at(data, addr).map_err(|_| libc::EFAULT)
    }
}
