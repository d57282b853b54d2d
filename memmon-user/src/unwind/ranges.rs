//! Space in a fixed-size kernel array, handed out as contiguous ranges (each object's rows,
//! each process' mappings) and taken back when they are evicted. First fit over a sorted free
//! list, with neighbours coalesced on release: tables change at attach, dlopen and exit, far
//! too rarely for anything cleverer to pay.

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Ranges {
    capacity: u32,
    /// start → length of each free range; never two adjacent ones.
    free: BTreeMap<u32, u32>,
}

impl Ranges {
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Self { capacity, free }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn free_total(&self) -> u64 {
        self.free.values().map(|&len| len as u64).sum()
    }

    /// The start of a free range of `len` entries, now taken; `None` if no free range is
    /// long enough.
    pub fn allocate(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        let (&start, &free_len) = self.free.iter().find(|&(_, &free_len)| free_len >= len)?;
        self.free.remove(&start);
        if free_len > len {
            self.free.insert(start + len, free_len - len);
        }
        Some(start)
    }

    /// Gives back `[start, start + len)`, which `allocate` returned.
    pub fn release(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        let (mut start, mut len) = (start, len);
        if let Some((&before, &before_len)) = self.free.range(..start).next_back() {
            debug_assert!(before + before_len <= start, "double release");
            if before + before_len == start {
                self.free.remove(&before);
                start = before;
                len += before_len;
            }
        }
        if let Some(&after_len) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += after_len;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_and_coalescing() {
        let mut ranges = Ranges::new(100);
        let a = ranges.allocate(30).unwrap();
        let b = ranges.allocate(30).unwrap();
        let c = ranges.allocate(30).unwrap();
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(ranges.allocate(11), None);
        ranges.release(b, 30);
        assert_eq!(ranges.allocate(40), None, "30 + 10 free, not contiguous");
        ranges.release(a, 30);
        assert_eq!(ranges.allocate(60), Some(0), "a and b coalesced");
        ranges.release(0, 60);
        ranges.release(c, 30);
        assert_eq!(ranges.free_total(), 100);
        assert_eq!(ranges.allocate(100), Some(0));
    }

    #[test]
    fn an_empty_range_takes_nothing() {
        let mut ranges = Ranges::new(0);
        assert_eq!(ranges.allocate(0), Some(0));
        assert_eq!(ranges.allocate(1), None);
    }
}
