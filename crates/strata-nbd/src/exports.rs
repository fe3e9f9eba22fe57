//! Named exports a server offers; changeable while it runs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::proto::MAX_STRING_LEN;
use crate::target::BlockTarget;

/// Why an export could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("export name longer than {MAX_STRING_LEN} bytes")]
    NameTooLong,
    #[error("export name contains NUL")]
    NameHasNul,
    #[error("export {0:?} already exists")]
    Exists(String),
}

/// What a lookup returns: the canonical name and its target.
#[derive(Clone)]
pub struct Export {
    pub name: String,
    pub target: Arc<dyn BlockTarget>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.target.size_bytes())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    map: BTreeMap<String, Arc<dyn BlockTarget>>,
    default: Option<String>,
}

/// Registry of exports by name. Cheap to clone; clones share the registry.
///
/// Connections already in transmission keep their target when it is removed.
#[derive(Clone, Default)]
pub struct Exports {
    inner: Arc<RwLock<Inner>>,
}

impl Exports {
    pub fn new() -> Self {
        Self::default()
    }

    fn validate(name: &str) -> Result<(), ExportError> {
        if name.len() > MAX_STRING_LEN {
            return Err(ExportError::NameTooLong);
        }
        if name.contains('\0') {
            return Err(ExportError::NameHasNul);
        }
        Ok(())
    }

    /// Adds an export; fails if the name is taken.
    pub fn add(
        &self,
        name: impl Into<String>,
        target: Arc<dyn BlockTarget>,
    ) -> Result<(), ExportError> {
        let name = name.into();
        Self::validate(&name)?;
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if g.map.contains_key(&name) {
            return Err(ExportError::Exists(name));
        }
        g.map.insert(name, target);
        Ok(())
    }

    /// Adds or replaces an export, returning the previous target.
    pub fn insert(
        &self,
        name: impl Into<String>,
        target: Arc<dyn BlockTarget>,
    ) -> Result<Option<Arc<dyn BlockTarget>>, ExportError> {
        let name = name.into();
        Self::validate(&name)?;
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        Ok(g.map.insert(name, target))
    }

    /// Removes an export; new connections can no longer select it.
    pub fn remove(&self, name: &str) -> Option<Arc<dyn BlockTarget>> {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if g.default.as_deref() == Some(name) {
            g.default = None;
        }
        g.map.remove(name)
    }

    /// Export that an empty name selects (when no export is literally named "").
    pub fn set_default(&self, name: Option<String>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        g.default = name;
    }

    /// Resolves a client-supplied name (the empty name means the default export).
    pub fn get(&self, name: &str) -> Option<Export> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = g.map.get(name) {
            return Some(Export {
                name: name.to_string(),
                target: Arc::clone(t),
            });
        }
        if name.is_empty() {
            let def = g.default.as_ref()?;
            return g.map.get(def).map(|t| Export {
                name: def.clone(),
                target: Arc::clone(t),
            });
        }
        None
    }

    /// Names and descriptions, sorted by name.
    pub fn list(&self) -> Vec<(String, Option<String>)> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.map
            .iter()
            .map(|(n, t)| (n.clone(), t.description()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemTarget;

    #[test]
    fn add_remove_default() {
        let e = Exports::new();
        e.add("a", Arc::new(MemTarget::new(4096))).unwrap();
        assert_eq!(
            e.add("a", Arc::new(MemTarget::new(1))).unwrap_err(),
            ExportError::Exists("a".into())
        );
        assert!(e.get("").is_none());
        e.set_default(Some("a".into()));
        assert_eq!(e.get("").unwrap().name, "a");
        assert_eq!(e.list().len(), 1);
        assert!(e.remove("a").is_some());
        assert!(e.get("a").is_none() && e.get("").is_none());
        assert!(e.is_empty());
        assert_eq!(
            e.add("x\0y", Arc::new(MemTarget::new(1))).unwrap_err(),
            ExportError::NameHasNul
        );
    }
}
