//! Cedar entity type names, parsed once per thread: Cedar's name parser
//! costs more than the rest of a request's uids, and a deployment sends few
//! types. A leaf, so every module that reads names from JSON can use it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::EntityTypeName;

/// Most parsed type names a thread keeps.
const TYPE_NAMES: usize = 256;

thread_local! {
    /// Type names this thread has parsed. Per thread, so a lookup takes no
    /// lock and shares no cache line; emptied when full, so odd types cannot
    /// grow it.
    static PARSED_TYPES: RefCell<HashMap<Box<str>, EntityTypeName>> = RefCell::default();
}

/// `text` as a Cedar entity type name: the same answer as
/// [`EntityTypeName::from_str`], remembered when it parses.
pub(crate) fn type_name(text: &str) -> Result<EntityTypeName, Box<cedar_policy::ParseErrors>> {
    PARSED_TYPES.with_borrow_mut(|parsed| {
        if let Some(name) = parsed.get(text) {
            return Ok(name.clone());
        }
        let name = EntityTypeName::from_str(text).map_err(Box::new)?;
        if parsed.len() >= TYPE_NAMES {
            parsed.clear();
        }
        parsed.insert(text.into(), name.clone());
        Ok(name)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_remembered_type_parses_as_cedar_parses_it_and_the_memory_stays_bounded() {
        for _ in 0..2 {
            for text in ["User", "Mesh::Workload", "A::B::C"] {
                assert_eq!(
                    type_name(text).unwrap(),
                    EntityTypeName::from_str(text).unwrap()
                );
            }
            for bad in ["", "no good", "User::", " User", "1x"] {
                assert!(type_name(bad).is_err(), "{bad:?}");
            }
        }
        assert!(
            PARSED_TYPES.with_borrow(|p| !p.contains_key("no good")),
            "only names that parse are remembered"
        );
        for i in 0..TYPE_NAMES * 2 {
            type_name(&format!("T{i}")).unwrap();
        }
        let held = PARSED_TYPES.with_borrow(HashMap::len);
        assert!((1..=TYPE_NAMES).contains(&held), "{held}");
        assert_eq!(
            type_name("Mesh::Workload").unwrap().to_string(),
            "Mesh::Workload"
        );
    }
}
