//! Bounds-checked, atomic access to a shared linear memory: the host's
//! view of a shared memory group's published regions, and how host
//! functions copy guest data in and out of a shared memory.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use wasmtime::SharedMemory;

/// A named part of a group's memory, published by a guest. All accesses are
/// bounds-checked against the region; concurrent guest writes may be seen
/// partially, as with any shared memory.
#[derive(Clone)]
pub struct Region {
    memory: SharedMemory,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// An access outside a region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access of {len} bytes at {at} is outside the region of {region_len} bytes")]
pub struct OutOfBounds {
    at: usize,
    len: usize,
    region_len: usize,
}

impl Region {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the region in the group's memory.
    pub fn offset(&self) -> usize {
        self.offset
    }

    fn check(
        &self,
        at: usize,
        len: usize,
        align: usize,
    ) -> std::result::Result<usize, OutOfBounds> {
        let out = OutOfBounds {
            at,
            len,
            region_len: self.len,
        };
        let end = at.checked_add(len).ok_or(out.clone())?;
        if end > self.len {
            return Err(out);
        }
        let addr = self.offset + at;
        if !addr.is_multiple_of(align) {
            return Err(out);
        }
        Ok(addr)
    }

    fn byte(&self, addr: usize) -> &AtomicU8 {
        let cell = &self.memory.data()[addr];
        // SAFETY: the cell lies within the shared memory (bounds checked by
        // `check`, and the memory never shrinks); wasm threads access it
        // concurrently, so it is only ever accessed atomically here.
        unsafe { AtomicU8::from_ptr(cell.get()) }
    }

    fn word(&self, addr: usize) -> &AtomicU32 {
        let cell = &self.memory.data()[addr];
        // SAFETY: `check` verified the 4 bytes at `addr` are inside the
        // memory and 4-byte aligned; access is atomic, as wasm atomics are.
        unsafe { AtomicU32::from_ptr(cell.get().cast::<u32>()) }
    }

    /// Copies `buf.len()` bytes starting at `at` into `buf`.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if the range leaves the region.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> std::result::Result<(), OutOfBounds> {
        let addr = self.check(at, buf.len(), 1)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(addr + i).load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// The whole region's bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut buf = vec![0; self.len];
        // The range is the region itself.
        let _ = self.read(0, &mut buf);
        buf
    }

    /// Writes `data` starting at `at`.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if the range leaves the region.
    pub fn write(&self, at: usize, data: &[u8]) -> std::result::Result<(), OutOfBounds> {
        let addr = self.check(at, data.len(), 1)?;
        for (i, b) in data.iter().enumerate() {
            self.byte(addr + i).store(*b, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(())
    }

    /// Atomically loads the `u32` at byte offset `at` (4-byte aligned).
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if it leaves the region or is misaligned.
    pub fn load_u32(&self, at: usize) -> std::result::Result<u32, OutOfBounds> {
        let addr = self.check(at, 4, 4)?;
        Ok(u32::from_le(self.word(addr).load(Ordering::SeqCst)))
    }

    /// Atomically stores `value` at byte offset `at` (4-byte aligned).
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if it leaves the region or is misaligned.
    pub fn store_u32(&self, at: usize, value: u32) -> std::result::Result<(), OutOfBounds> {
        let addr = self.check(at, 4, 4)?;
        self.word(addr).store(value.to_le(), Ordering::SeqCst);
        Ok(())
    }

    /// Atomically adds to the `u32` at `at`, returning the previous value.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if it leaves the region or is misaligned.
    pub fn fetch_add_u32(&self, at: usize, value: u32) -> std::result::Result<u32, OutOfBounds> {
        let addr = self.check(at, 4, 4)?;
        // Little-endian host (x86_64, aarch64): wasm's byte order.
        Ok(self.word(addr).fetch_add(value, Ordering::SeqCst))
    }

    /// Wakes up to `count` guests waiting (`memory.atomic.wait32`) on the
    /// `u32` at `at`; returns how many woke.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] if it leaves the region or is misaligned.
    pub fn notify(&self, at: usize, count: u32) -> std::result::Result<u32, OutOfBounds> {
        let addr = self.check(at, 4, 4)?;
        Ok(self.memory.atomic_notify(addr as u64, count).unwrap_or(0))
    }
}

impl Region {
    /// The `len` bytes of `memory` from `offset`. Accesses are checked
    /// against these bounds; the caller checked they lie in the memory
    /// when the region was published.
    pub(crate) fn new(memory: SharedMemory, offset: usize, len: usize) -> Region {
        Region {
            memory,
            offset,
            len,
        }
    }
}

/// All of a shared memory as one region, for host functions that copy
/// guest data in and out.
pub(crate) fn whole(memory: &SharedMemory) -> Region {
    Region {
        memory: memory.clone(),
        offset: 0,
        len: memory.data_size(),
    }
}
