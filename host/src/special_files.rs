//! Special files in granted directories: FIFOs, character and block
//! devices and sockets are not opened.
//!
//! wasmtime-wasi opens a guest's files with a plain blocking `open(2)` on
//! the runtime's shared blocking pool (`spawn_blocking`), with flags the
//! embedder cannot change. Opening a FIFO that has no writer (or, to
//! write, no reader) blocks in the kernel until one appears, which may be
//! never; a terminal or a serial device can block the same way, and so can
//! every read of them. The task's timeout ends the task, but not the
//! blocked `open`: its pool thread stays taken. 600 such tasks fill
//! Tokio's default pool of 512 threads, and then every other task's file
//! access (and the embedder's own `spawn_blocking`) waits forever.
//!
//! So Isola grants regular files, directories and symbolic links only.
//! `path_open` (preview1) and `descriptor.open-at` (preview2) are wrapped:
//! the path is first looked up with `stat` (the same sandboxed lookup,
//! the same symlink flag; `stat` never blocks on a special file), and a
//! special file is refused with `ENOTSUP` (`ENOTDIR` when a directory was
//! asked for) before anything opens it. What was opened is checked again,
//! so a special file renamed into place between the two steps is closed at
//! once rather than read from. (That race needs a FIFO already present in
//! a writable grant or put there by the host: a guest cannot make one.)
//! Every host call of a task then holds a pool thread only for the time a
//! regular file system call takes.

use std::future::Future;

use wasmtime::component::Resource;
use wasmtime::{AsContextMut, Caller, Extern};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p1::types::{Errno, Fd, Filetype, Lookupflags, Oflags};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1_abi, WasiSnapshotPreview1};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, DescriptorType, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wiggle::{GuestMemory, GuestPtr};

use crate::outcome::BadHostCall;
use crate::state::TaskState;

/// The preview2 interface whose `open-at` is wrapped, at the version
/// wasmtime-wasi 48 defines (`src/p2/wit/deps/filesystem.wit`). The linker
/// resolves a component's older 0.2 imports to it by semver. A wasmtime
/// upgrade that moves the version must move this too: the component cases
/// of `tests/all/probe_more.rs` fail (the open hangs to its timeout) if the
/// wrapper is not the one components get.
const P2_FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Wraps WASI preview1 `path_open` in `linker`, which must already hold
/// wasmtime-wasi's (`wasmtime_wasi::p1::add_to_linker_async`).
///
/// # Errors
///
/// If the linker refuses the definition (a wasmtime bug, not an input).
pub(crate) fn add_to_module_linker(
    linker: &mut wasmtime::Linker<TaskState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker
        .func_wrap_async("wasi_snapshot_preview1", "path_open", path_open)
        .map(|_| ());
    linker.allow_shadowing(false);
    defined
}

/// Wraps `wasi:filesystem/types.[method]descriptor.open-at` in `linker`,
/// which must already hold wasmtime-wasi's
/// (`wasmtime_wasi::p2::add_to_linker_async`).
///
/// # Errors
///
/// If the linker refuses the definition (a wasmtime bug, not an input).
pub(crate) fn add_to_component_linker(
    linker: &mut wasmtime::component::Linker<TaskState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker
        .instance(P2_FILESYSTEM_TYPES)
        .and_then(|mut types| types.func_wrap_async("[method]descriptor.open-at", open_at));
    linker.allow_shadowing(false);
    defined
}

/// Whether a preview1 file type is one Isola does not open: anything but a
/// regular file, a directory or a symbolic link (which `path_open` without
/// `LOOKUP_SYMLINK_FOLLOW` refuses to open anyway). A FIFO is `Unknown` in
/// preview1.
fn is_special_p1(kind: Filetype) -> bool {
    !matches!(
        kind,
        Filetype::RegularFile | Filetype::Directory | Filetype::SymbolicLink
    )
}

/// As [`is_special_p1`], for preview2.
fn is_special_p2(kind: DescriptorType) -> bool {
    !matches!(
        kind,
        DescriptorType::RegularFile | DescriptorType::Directory | DescriptorType::SymbolicLink
    )
}

/// The errno a refused special file gets: what `open` would say for a
/// directory asked of a non-directory, else "not supported".
fn refusal_p1(directory: bool) -> i32 {
    let errno = if directory {
        Errno::Notdir
    } else {
        Errno::Notsup
    };
    i32::from(u16::from(errno))
}

/// As [`refusal_p1`], for preview2.
fn refusal_p2(flags: OpenFlags) -> ErrorCode {
    if flags.contains(OpenFlags::DIRECTORY) {
        ErrorCode::NotDirectory
    } else {
        ErrorCode::Unsupported
    }
}

/// WASI preview1 `path_open(fd, dirflags, path, path_len, oflags,
/// rights_base, rights_inheriting, fdflags, opened) -> errno`: wasmtime-wasi's,
/// with special files refused (see the module documentation).
#[allow(
    clippy::type_complexity,
    reason = "the nine ABI parameters of path_open, as wasmtime passes them"
)]
fn path_open(
    mut caller: Caller<'_, TaskState>,
    (dirfd, dirflags, path, path_len, oflags, rights_base, rights_inheriting, fdflags, opened): (
        i32,
        i32,
        i32,
        i32,
        i32,
        i64,
        i64,
        i32,
        i32,
    ),
) -> Box<dyn Future<Output = wasmtime::Result<i32>> + Send + '_> {
    Box::new(async move {
        // As wiggle's own binding does: the bytes this call may copy from
        // the guest (its path), and the guest's memory, own or shared.
        let fuel = caller.as_context_mut().hostcall_fuel();
        let export = caller.get_export("memory");
        let (mut memory, wasi) = match &export {
            Some(Extern::Memory(m)) => {
                let (bytes, state) = m.data_and_store_mut(&mut caller);
                (GuestMemory::Unshared(bytes), &mut state.wasi)
            }
            Some(Extern::SharedMemory(m)) => {
                (GuestMemory::Shared(m.data()), &mut caller.data_mut().wasi)
            }
            _ => {
                return Err(wasmtime::Error::new(BadHostCall {
                    call: "wasi_snapshot_preview1.path_open",
                    message: "the module exports no `memory`".into(),
                }));
            }
        };

        // Before opening: `open` itself is what blocks on a FIFO. Arguments
        // that do not decode are left to wasmtime-wasi's call below, which
        // reports them as it always has. `O_CREAT | O_EXCL` never opens an
        // existing file, so it cannot block on one.
        if let (Ok(lookup), Ok(how)) = (Lookupflags::try_from(dirflags), Oflags::try_from(oflags))
            && !how.contains(Oflags::CREAT | Oflags::EXCL)
        {
            WasiSnapshotPreview1::set_hostcall_fuel(&mut *wasi, fuel);
            let target = GuestPtr::<str>::new((path as u32, path_len as u32));
            // A path that does not exist (yet) or cannot be looked up is
            // for the open to report.
            if let Ok(stat) = WasiSnapshotPreview1::path_filestat_get(
                &mut *wasi,
                &mut memory,
                Fd::from(dirfd),
                lookup,
                target,
            )
            .await
                && is_special_p1(stat.filetype)
            {
                return Ok(refusal_p1(how.contains(Oflags::DIRECTORY)));
            }
        }

        WasiSnapshotPreview1::set_hostcall_fuel(&mut *wasi, fuel);
        let errno = p1_abi::path_open(
            &mut *wasi,
            &mut memory,
            dirfd,
            dirflags,
            path,
            path_len,
            oflags,
            rights_base,
            rights_inheriting,
            fdflags,
            opened,
        )
        .await?;

        // After: a special file renamed into place since the check is
        // closed before the guest can read from it (a read would block a
        // pool thread just the same).
        if errno == 0
            && let Ok(fd) = memory.read(GuestPtr::<Fd>::new(opened as u32))
            && let Ok(stat) =
                WasiSnapshotPreview1::fd_filestat_get(&mut *wasi, &mut memory, fd).await
            && is_special_p1(stat.filetype)
        {
            // Closing a descriptor we just opened cannot fail in a way the
            // guest could act on; its fd is free again either way.
            let _ = WasiSnapshotPreview1::fd_close(&mut *wasi, &mut memory, fd).await;
            let directory =
                Oflags::try_from(oflags).is_ok_and(|how| how.contains(Oflags::DIRECTORY));
            return Ok(refusal_p1(directory));
        }
        Ok(errno)
    })
}

/// `wasi:filesystem/types.[method]descriptor.open-at`: wasmtime-wasi's,
/// with special files refused (see the module documentation).
#[allow(
    clippy::type_complexity,
    reason = "the parameters and result of open-at, as the component linker passes them"
)]
fn open_at(
    mut store: wasmtime::StoreContextMut<'_, TaskState>,
    (dir, path_flags, path, open_flags, flags): (
        Resource<Descriptor>,
        PathFlags,
        String,
        OpenFlags,
        DescriptorFlags,
    ),
) -> Box<
    dyn Future<Output = wasmtime::Result<(Result<Resource<Descriptor>, ErrorCode>,)>> + Send + '_,
> {
    Box::new(async move {
        let mut view = WasiFilesystemView::filesystem(store.data_mut());

        // Before opening, as for preview1. `dir` is the guest's borrowed
        // handle; the look-up gets a second borrow of the same descriptor.
        let creates_new =
            open_flags.contains(OpenFlags::CREATE) && open_flags.contains(OpenFlags::EXCLUSIVE);
        if !creates_new
            && let Ok(stat) = HostDescriptor::stat_at(
                &mut view,
                Resource::new_borrow(dir.rep()),
                path_flags,
                path.clone(),
            )
            .await
            && is_special_p2(stat.type_)
        {
            return Ok((Err(refusal_p2(open_flags)),));
        }

        let opened = match HostDescriptor::open_at(
            &mut view, dir, path_flags, path, open_flags, flags,
        )
        .await
        {
            Ok(opened) => opened,
            // An error code is the guest's answer; anything else traps,
            // as wasmtime-wasi's own binding does.
            Err(err) => return Ok((Err(err.downcast()?),)),
        };

        // After, as for preview1: dropping the descriptor from the table
        // closes it.
        if let Ok(kind) =
            HostDescriptor::get_type(&mut view, Resource::new_borrow(opened.rep())).await
            && is_special_p2(kind)
        {
            view.table.delete(opened)?;
            return Ok((Err(refusal_p2(open_flags)),));
        }
        Ok((Ok(opened),))
    })
}
