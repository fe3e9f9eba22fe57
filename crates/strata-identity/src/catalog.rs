//! The service catalog tokens carry.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Where this cloud's services answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogConfig {
    pub region: String,
    /// `http://H:5000`
    pub identity_url: String,
    /// `http://H:8080`
    pub object_store_url: String,
    /// `http://H:8776`
    pub volume_url: String,
    /// `http://H:8774`, once the node serves the compute API (a catalog entry whose
    /// endpoint does not answer version discovery breaks clients that merely touch it).
    pub compute_url: Option<String>,
    /// `http://H:9292`, once the node serves the image API.
    pub image_url: Option<String>,
}

/// A stable 32 hex digit id, the same on every node.
fn stable_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl CatalogConfig {
    /// `<identity_url>/v3`
    pub fn identity_v3(&self) -> String {
        format!("{}/v3", base(&self.identity_url))
    }

    /// `<object_store_url>/v1/AUTH_<project_id>`
    pub fn storage_url(&self, project_id: &str) -> String {
        format!("{}/v1/AUTH_{project_id}", base(&self.object_store_url))
    }

    /// `(type, name, url)` of every service, for a token scoped to `project_id`.
    pub fn services(&self, project_id: &str) -> Vec<(&'static str, &'static str, String)> {
        let volume = base(&self.volume_url);
        let mut out = vec![
            ("identity", "keystone", self.identity_v3()),
            ("object-store", "swift", self.storage_url(project_id)),
            ("volumev2", "cinderv2", format!("{volume}/v2/{project_id}")),
            ("volumev3", "cinderv3", format!("{volume}/v3/{project_id}")),
            (
                "block-storage",
                "cinder",
                format!("{volume}/v3/{project_id}"),
            ),
        ];
        if let Some(url) = &self.compute_url {
            out.push(("compute", "nova", format!("{}/v2.1", base(url))));
        }
        if let Some(url) = &self.image_url {
            out.push(("image", "glance", base(url).to_string()));
        }
        out
    }

    /// The Keystone v3 catalog for a token scoped to `project_id`.
    pub fn catalog_json(&self, project_id: &str) -> Value {
        let entries: Vec<Value> = self
            .services(project_id)
            .into_iter()
            .map(|(ty, name, url)| {
                let endpoints: Vec<Value> = ["public", "internal", "admin"]
                    .iter()
                    .map(|iface| {
                        json!({
                            "id": stable_id(&["endpoint", ty, iface]),
                            "interface": iface,
                            "region": self.region,
                            "region_id": self.region,
                            "url": url,
                        })
                    })
                    .collect();
                json!({
                    "type": ty,
                    "name": name,
                    "id": stable_id(&["service", ty]),
                    "endpoints": endpoints,
                })
            })
            .collect();
        Value::Array(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CatalogConfig {
        CatalogConfig {
            region: "RegionOne".into(),
            identity_url: "http://h:5000/".into(),
            object_store_url: "http://h:8080".into(),
            volume_url: "http://h:8776".into(),
            compute_url: Some("http://h:8774".into()),
            image_url: Some("http://h:9292".into()),
        }
    }

    #[test]
    fn services_not_served_stay_out_of_the_catalog() {
        let mut c = cfg();
        c.compute_url = None;
        c.image_url = None;
        let types: Vec<&str> = c.services("p1").iter().map(|s| s.0).collect();
        assert_eq!(
            types,
            [
                "identity",
                "object-store",
                "volumev2",
                "volumev3",
                "block-storage"
            ]
        );
    }

    #[test]
    fn catalog_shape() {
        let c = cfg().catalog_json("p1");
        let arr = c.as_array().unwrap();
        assert_eq!(arr.len(), 7);
        let find = |ty: &str| arr.iter().find(|e| e["type"] == ty).unwrap().clone();
        let swift = find("object-store");
        assert_eq!(swift["name"], "swift");
        assert_eq!(swift["endpoints"].as_array().unwrap().len(), 3);
        assert_eq!(swift["endpoints"][0]["url"], "http://h:8080/v1/AUTH_p1");
        assert_eq!(swift["endpoints"][0]["region_id"], "RegionOne");
        assert_eq!(find("identity")["endpoints"][1]["url"], "http://h:5000/v3");
        assert_eq!(
            find("volumev3")["endpoints"][2]["url"],
            "http://h:8776/v3/p1"
        );
        assert_eq!(
            find("volumev2")["endpoints"][0]["url"],
            "http://h:8776/v2/p1"
        );
        assert_eq!(find("compute")["endpoints"][0]["url"], "http://h:8774/v2.1");
        assert_eq!(find("image")["endpoints"][0]["url"], "http://h:9292");
        // Ids are stable and distinct.
        assert_eq!(cfg().catalog_json("p1"), c);
        assert_eq!(swift["id"].as_str().unwrap().len(), 32);
        assert_ne!(swift["endpoints"][0]["id"], swift["endpoints"][1]["id"]);
    }
}
