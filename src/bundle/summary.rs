//! [`Summary`]: what a bundle carries, counted for logs, `shipper flush`
//! and `shipper status`. Filled by the packer and by the receiver alike.

/// What a bundle carries, for logs and `shipper flush`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub files: u64,
    pub parts: u64,
    pub deletions: u64,
    /// Content bytes (before compression).
    pub bytes: u64,
    /// Files the receivers held with the same content already: only their
    /// metadata travelled.
    #[serde(default)]
    pub kept: u64,
    /// Files the receivers made from their own copy at another path.
    #[serde(default)]
    pub copied: u64,
    /// Files rebuilt from the version the receivers hold at the same path
    /// and the bytes that changed (counted in `files`, those bytes in
    /// `bytes`).
    #[serde(default)]
    pub deltas: u64,
}

impl Summary {
    pub fn add(&mut self, other: &Summary) {
        self.files += other.files;
        self.parts += other.parts;
        self.deletions += other.deletions;
        self.bytes += other.bytes;
        self.kept += other.kept;
        self.copied += other.copied;
        self.deltas += other.deltas;
    }
}
