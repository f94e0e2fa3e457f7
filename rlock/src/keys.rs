//! Redis key names for one lock. All keys of a lock carry the same hash tag, so they live in
//! one Redis Cluster slot and one script may touch them all.

/// The Redis names used by one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKeys {
    /// The lock's logical name, as given by the user.
    pub name: String,
    /// The hash holding owner -> hold count and the acquisition's token.
    pub lock: String,
    /// The fencing counter (seeded from Redis TIME when absent, so tokens keep increasing
    /// across data loss; kept a week after its last use).
    pub fence: String,
    /// The pub/sub channel on which releases are announced.
    pub channel: String,
}

impl LockKeys {
    /// Derive the key names for `name` under `prefix`: `{prefix}:{<name>}`,
    /// `{prefix}:{<name>}:fence` and `{prefix}:{<name>}:released`.
    pub fn new(prefix: &str, name: &str) -> Self {
        let tagged = format!("{prefix}:{{{name}}}");
        LockKeys {
            name: name.to_owned(),
            fence: format!("{tagged}:fence"),
            channel: format!("{tagged}:released"),
            lock: tagged,
        }
    }
}

/// Lock names must not contain braces (they would change the hash tag) and must not be empty.
pub(crate) fn validate_name(name: &str) -> Result<(), crate::LockError> {
    if name.is_empty() || name.contains(['{', '}']) {
        return Err(crate::LockError::InvalidArgument(format!(
            "lock name {name:?} must be non-empty and contain no braces"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = LockKeys::new("rlock", "stock:sku-1:3");
        assert_eq!(k.lock, "rlock:{stock:sku-1:3}");
        assert_eq!(k.fence, "rlock:{stock:sku-1:3}:fence");
        assert_eq!(k.channel, "rlock:{stock:sku-1:3}:released");
    }

    #[test]
    fn braces_and_empty_names_are_refused() {
        assert!(validate_name("a{b}").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("ok:1").is_ok());
    }
}
