//! The receiver's permission policy, as rsync's `--chmod`/`--chown` and
//! Syncthing's ignorePerms give: `receiver.file_mode` and `dir_mode` (a
//! fixed octal mode, or `"mirror"` for the mode the sender's file had) and
//! `receiver.group` (every file and directory shipper writes is given that
//! group). The default makes a tree any web server can read: 0644 files,
//! 0755 directories. Deciding a mode is pure; [`Group::resolve`] looks the
//! group up (NSS, blocking) and checks shipper may use it.

/// Mode of files when `receiver.file_mode` is not set: readable by all.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of directories when `receiver.dir_mode` is not set.
pub const DEFAULT_DIR_MODE: u32 = 0o755;
/// The permission bits a policy may give: no setuid, setgid or sticky bit
/// ever comes from a bundle or a config.
const PERMISSION_BITS: u32 = 0o777;

/// How the mode of what shipper writes is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRule {
    /// The mode the sender's file had (permission bits only).
    Mirror,
    Fixed(u32),
}

impl ModeRule {
    /// Parse `"mirror"` or an octal mode such as `"0644"` or `"755"`;
    /// the error names `key`.
    pub fn parse(key: &str, value: &str) -> Result<Self, String> {
        if value == "mirror" {
            return Ok(Self::Mirror);
        }
        let digits = value.strip_prefix("0o").unwrap_or(value);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if !digits.is_empty() && mode <= PERMISSION_BITS => Ok(Self::Fixed(mode)),
            _ => Err(format!(
                "{key} = {value:?}: expected an octal mode between 000 and 0777 (e.g. \"0644\") or \"mirror\""
            )),
        }
    }

    /// The mode to give something the sender had with `shipped` mode.
    pub fn mode_for(self, shipped: u32) -> u32 {
        match self {
            Self::Mirror => shipped & PERMISSION_BITS,
            Self::Fixed(mode) => mode,
        }
    }
}

/// A group that files and directories are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

impl Group {
    /// Look `name` (or a numeric gid) up and check this process may give
    /// files that group: root may give any; anyone else only a group they
    /// are in. Blocking (NSS). The error names `key`.
    pub fn resolve(key: &str, name: &str) -> Result<Self, String> {
        let gid = match name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => g.gid.as_raw(),
                Ok(None) => return Err(format!("{key} = {name:?}: no such group")),
                Err(e) => return Err(format!("{key} = {name:?}: cannot look the group up: {e}")),
            },
        };
        let groups = rustix::process::getgroups()
            .map_err(|e| format!("{key} = {name:?}: cannot list this process's groups: {e}"))?;
        let mine = groups
            .iter()
            .chain([&rustix::process::getegid()])
            .map(|g| g.as_raw())
            .collect::<Vec<_>>();
        if may_use(rustix::process::geteuid().is_root(), &mine, gid) {
            Ok(Self {
                name: name.to_owned(),
                gid,
            })
        } else {
            Err(format!(
                "{key} = {name:?}: shipper runs as uid {} which is not in group {gid}, so it may not give files that group (add the user to the group, or run shipper as root)",
                rustix::process::geteuid().as_raw()
            ))
        }
    }
}

/// Whether a process (root or not, in `groups`) may chown a file it owns
/// to `gid`.
fn may_use(root: bool, groups: &[u32], gid: u32) -> bool {
    root || groups.contains(&gid)
}

/// The receiver's policy for what it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub file: ModeRule,
    pub dir: ModeRule,
    pub group: Option<Group>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            file: ModeRule::Fixed(DEFAULT_FILE_MODE),
            dir: ModeRule::Fixed(DEFAULT_DIR_MODE),
            group: None,
        }
    }
}

impl Policy {
    /// Today's behaviour before the policy existed: modes as the sender
    /// had them, no group. `replay` of an old archive can ask for it.
    pub fn mirror() -> Self {
        Self {
            file: ModeRule::Mirror,
            dir: ModeRule::Mirror,
            group: None,
        }
    }

    pub fn file_mode(&self, shipped: u32) -> u32 {
        self.file.mode_for(shipped)
    }

    pub fn dir_mode(&self, shipped: u32) -> u32 {
        self.dir.mode_for(shipped)
    }

    /// The gid to give what shipper writes, if any.
    pub fn gid(&self) -> Option<u32> {
        self.group.as_ref().map(|g| g.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_octal_or_mirror_and_nothing_else() {
        let k = "receiver.file_mode";
        assert_eq!(ModeRule::parse(k, "0644"), Ok(ModeRule::Fixed(0o644)));
        assert_eq!(ModeRule::parse(k, "755"), Ok(ModeRule::Fixed(0o755)));
        assert_eq!(ModeRule::parse(k, "0o640"), Ok(ModeRule::Fixed(0o640)));
        assert_eq!(ModeRule::parse(k, "mirror"), Ok(ModeRule::Mirror));
        for bad in [
            "",
            "0o",
            "644x",
            "0888",
            "4755",
            "07777",
            "rw-r--r--",
            "Mirror",
        ] {
            let err = ModeRule::parse(k, bad).unwrap_err();
            assert!(err.starts_with("receiver.file_mode = "), "{bad}: {err}");
        }
    }

    #[test]
    fn mirror_keeps_only_permission_bits_and_fixed_ignores_the_sender() {
        assert_eq!(ModeRule::Mirror.mode_for(0o104755), 0o755);
        assert_eq!(ModeRule::Mirror.mode_for(0o640), 0o640);
        assert_eq!(ModeRule::Fixed(0o644).mode_for(0o600), 0o644);
        let p = Policy::default();
        assert_eq!((p.file_mode(0o600), p.dir_mode(0o700)), (0o644, 0o755));
    }

    #[test]
    fn only_root_or_a_member_may_give_a_group() {
        assert!(may_use(true, &[], 33));
        assert!(may_use(false, &[1000, 33], 33));
        assert!(!may_use(false, &[1000], 33));
    }

    #[test]
    fn an_unknown_group_is_refused_naming_the_key() {
        let err = Group::resolve("receiver.group", "no-such-group-shipper").unwrap_err();
        assert_eq!(
            err,
            "receiver.group = \"no-such-group-shipper\": no such group"
        );
    }
}
