//! Which of a profile's four numbers a view weighs stacks by, and how to say it.

use super::model::Values;
use crate::report::human_bytes;

/// What was allocated during the window, or what was still live at its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sample {
    /// Live at the end of the window (inuse_space / inuse_objects).
    #[default]
    Inuse,
    /// Allocated during the window (alloc_space / alloc_objects).
    Alloc,
}

/// Bytes, or blocks (allocations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// Bytes (inuse_space / alloc_space).
    #[default]
    Bytes,
    /// Live blocks (inuse_objects) or allocations (alloc_objects).
    Count,
}

/// One of the four sample types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measure {
    pub sample: Sample,
    pub by: By,
}

impl Measure {
    pub fn of(self, values: &Values) -> u64 {
        match (self.sample, self.by) {
            (Sample::Inuse, By::Bytes) => values.inuse_space,
            (Sample::Inuse, By::Count) => values.inuse_objects,
            (Sample::Alloc, By::Bytes) => values.alloc_space,
            (Sample::Alloc, By::Count) => values.alloc_objects,
        }
    }

    /// The pprof sample type, as `go tool pprof -sample_index` names it.
    pub fn sample_type(self) -> &'static str {
        match (self.sample, self.by) {
            (Sample::Inuse, By::Bytes) => "inuse_space",
            (Sample::Inuse, By::Count) => "inuse_objects",
            (Sample::Alloc, By::Bytes) => "alloc_space",
            (Sample::Alloc, By::Count) => "alloc_objects",
        }
    }

    /// What the number means, for titles: "live bytes at end of window".
    pub fn meaning(self) -> &'static str {
        match (self.sample, self.by) {
            (Sample::Inuse, By::Bytes) => "live bytes at end of window",
            (Sample::Inuse, By::Count) => "live blocks at end of window",
            (Sample::Alloc, By::Bytes) => "bytes allocated during window",
            (Sample::Alloc, By::Count) => "allocations during window",
        }
    }

    /// The unit of one count: "bytes", "blocks" or "allocations".
    pub fn unit(self) -> &'static str {
        match (self.sample, self.by) {
            (_, By::Bytes) => "bytes",
            (Sample::Inuse, By::Count) => "blocks",
            (Sample::Alloc, By::Count) => "allocations",
        }
    }

    /// A value for a person and exactly: "102.5 KiB (104950 bytes)", or "100 blocks".
    pub fn describe(self, value: u64) -> String {
        match self.by {
            By::Bytes => format!("{} ({value} bytes)", human_bytes(value)),
            By::Count => format!("{value} {}", self.unit()),
        }
    }

    /// A fixed-width cell: human and exact for bytes ("  102.5 KiB       104950"), exact for
    /// counts.
    pub fn cell(self, value: u64) -> String {
        match self.by {
            By::Bytes => format!("{:>10} {:>12}", human_bytes(value), value),
            By::Count => format!("{value:>12}"),
        }
    }

    /// Column titles over `cell`s.
    pub fn header(self, title: &str) -> String {
        match self.by {
            By::Bytes => format!("{title:>10} {:>12}", "BYTES"),
            By::Count => format!("{title:>12}"),
        }
    }
}

/// `part` as a percentage of `whole` (0 when the whole is 0).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_measure_reads_its_own_value() {
        let values = Values { alloc_objects: 1, alloc_space: 2, inuse_objects: 3, inuse_space: 4 };
        let read = |sample, by| Measure { sample, by }.of(&values);
        assert_eq!(
            [
                read(Sample::Alloc, By::Count),
                read(Sample::Alloc, By::Bytes),
                read(Sample::Inuse, By::Count),
                read(Sample::Inuse, By::Bytes)
            ],
            [1, 2, 3, 4]
        );
        assert_eq!(Measure::default().sample_type(), "inuse_space");
        assert_eq!(Measure::default().describe(104_950), "102.5 KiB (104950 bytes)");
        assert_eq!(Measure { sample: Sample::Alloc, by: By::Count }.describe(5), "5 allocations");
        assert_eq!(percent(1, 0), 0.0);
    }
}
