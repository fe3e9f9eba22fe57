//! Container and account listings in Swift's three formats, and the
//! `delimiter` roll-up of names into subdirectories.

use crate::response::{iso_date, put_num, with_body};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::collections::BTreeMap;
use strata_object::{ListingEntry, ObjectService};
use strata_types::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Json,
    Xml,
}

/// `format=` beats `Accept`, as in Swift.
pub fn format_of(headers: &HeaderMap, query: &BTreeMap<String, String>) -> Format {
    if let Some(f) = query.get("format") {
        return match f.to_ascii_lowercase().as_str() {
            "json" => Format::Json,
            "xml" => Format::Xml,
            _ => Format::Plain,
        };
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/json") {
        Format::Json
    } else if accept.contains("application/xml") || accept.contains("text/xml") {
        Format::Xml
    } else {
        Format::Plain
    }
}

/// One row of an object listing: an object or a rolled-up subdirectory.
#[derive(Debug, Clone)]
pub enum ObjectRow {
    Object(String, ListingEntry),
    Subdir(String),
}

/// One row of an account listing.
#[derive(Debug, Clone)]
pub struct ContainerRow {
    pub name: String,
    pub count: u64,
    pub bytes: u64,
    pub created: Timestamp,
    /// A rolled-up prefix (delimiter listing), not a container.
    pub subdir: bool,
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// What a listing request asks for.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub marker: Option<String>,
    pub end_marker: Option<String>,
    pub reverse: bool,
    /// `path=`: only the names directly under this path (prefix `path/`, delimiter `/`).
    pub path: Option<String>,
    pub limit: usize,
}

fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on" | "t" | "y"
    )
}

impl ListParams {
    pub fn from_query(query: &BTreeMap<String, String>, limit: usize) -> Self {
        let nonempty = |k: &str| query.get(k).filter(|v| !v.is_empty()).cloned();
        let mut p = ListParams {
            prefix: query.get("prefix").cloned().unwrap_or_default(),
            delimiter: nonempty("delimiter"),
            marker: nonempty("marker"),
            end_marker: nonempty("end_marker"),
            reverse: query.get("reverse").is_some_and(|v| truthy(v)),
            path: None,
            limit,
        };
        if let Some(path) = query.get("path") {
            p.prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{}/", path.trim_end_matches('/'))
            };
            p.delimiter = Some("/".into());
            p.path = Some(p.prefix.clone());
        }
        p
    }
}

/// A listing row: an item or a rolled-up subdirectory.
#[derive(Debug, Clone)]
pub enum Row<T> {
    Item(String, T),
    Subdir(String),
}

/// Applies marker, end_marker, reverse, delimiter (or path) and limit to `rows`, which are
/// every name starting with the prefix, in ascending order.
pub fn select<T>(rows: Vec<(String, T)>, p: &ListParams) -> Vec<Row<T>> {
    let in_range = |name: &str| {
        if p.reverse {
            p.marker.as_deref().is_none_or(|m| name < m)
                && p.end_marker.as_deref().is_none_or(|e| name > e)
        } else {
            p.marker.as_deref().is_none_or(|m| name > m)
                && p.end_marker.as_deref().is_none_or(|e| name < e)
        }
    };
    let mut rows: Vec<(String, T)> = rows
        .into_iter()
        .filter(|(n, _)| n.starts_with(&p.prefix) && in_range(n))
        .collect();
    if p.reverse {
        rows.reverse();
    }
    let mut out: Vec<Row<T>> = Vec::new();
    let mut last_sub: Option<String> = None;
    for (name, item) in rows {
        if out.len() >= p.limit {
            break;
        }
        if let Some(d) = p.delimiter.as_deref() {
            let rest = &name[p.prefix.len()..];
            if let Some(i) = rest.find(d) {
                let cut = i + d.len();
                if p.path.is_some() {
                    // Only names directly under the path; a trailing delimiter is a
                    // directory marker object and stays.
                    if cut < rest.len() {
                        continue;
                    }
                } else {
                    let sub = format!("{}{}", p.prefix, &rest[..cut]);
                    if last_sub.as_deref() != Some(sub.as_str()) {
                        last_sub = Some(sub.clone());
                        // A subdir equal to the marker was already given on an earlier page.
                        if p.marker.as_deref() != Some(sub.as_str()) {
                            out.push(Row::Subdir(sub));
                        }
                    }
                    continue;
                }
            }
        }
        if p.path.as_deref() == Some(name.as_str()) {
            continue;
        }
        out.push(Row::Item(name, item));
    }
    out
}

/// Object rows of a container for `p`.
pub async fn list_objects(
    objects: &ObjectService,
    account: &str,
    container: &str,
    p: &ListParams,
) -> strata_object::Result<Vec<ObjectRow>> {
    // Forward pages without roll-up are bounded by the store; the rest is selected here.
    let simple = !p.reverse && p.delimiter.is_none();
    let (marker, end_marker, limit) = if simple {
        (p.marker.as_deref(), p.end_marker.as_deref(), p.limit)
    } else {
        (None, None, usize::MAX)
    };
    let rows = objects
        .list_objects(account, container, &p.prefix, marker, end_marker, limit)
        .await?;
    Ok(select(rows, p)
        .into_iter()
        .map(|r| match r {
            Row::Item(n, e) => ObjectRow::Object(n, e),
            Row::Subdir(s) => ObjectRow::Subdir(s),
        })
        .collect())
}

fn finish(format: Format, mut h: HeaderMap, body: String, empty: bool) -> Response {
    let ct = match format {
        Format::Plain => "text/plain; charset=utf-8",
        Format::Json => "application/json; charset=utf-8",
        Format::Xml => "application/xml; charset=utf-8",
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    put_num(&mut h, "content-length", body.len() as u64);
    // Swift answers an empty plain listing with 204.
    let status = if empty && format == Format::Plain {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    with_body(status, h, Body::from(body))
}

pub fn objects(
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    h: HeaderMap,
    container: &str,
    rows: &[ObjectRow],
) -> Response {
    let format = format_of(headers, query);
    let body = match format {
        Format::Plain => rows
            .iter()
            .map(|r| match r {
                ObjectRow::Object(n, _) | ObjectRow::Subdir(n) => format!("{n}\n"),
            })
            .collect(),
        Format::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| match r {
                    ObjectRow::Object(n, e) => {
                        let v = shown(e);
                        let mut item = serde_json::json!({
                            "name": n, "hash": v.hash, "bytes": v.bytes,
                            "content_type": v.content_type, "last_modified": iso_date(e.timestamp),
                        });
                        if let Some(slo_etag) = v.slo_etag {
                            item["slo_etag"] = slo_etag.into();
                        }
                        item
                    }
                    ObjectRow::Subdir(s) => serde_json::json!({ "subdir": s }),
                })
                .collect();
            serde_json::Value::Array(items).to_string()
        }
        Format::Xml => {
            let mut s = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<container name=\"{}\">",
                xml_escape(container)
            );
            for r in rows {
                match r {
                    ObjectRow::Object(n, e) => {
                        let v = shown(e);
                        s.push_str(&format!(
                            "<object><name>{}</name><hash>{}</hash><bytes>{}</bytes><content_type>{}</content_type><last_modified>{}</last_modified></object>",
                            xml_escape(n), xml_escape(&v.hash), v.bytes, xml_escape(&v.content_type), iso_date(e.timestamp)
                        ))
                    }
                    ObjectRow::Subdir(d) => s.push_str(&format!(
                        "<subdir name=\"{0}\"><name>{0}</name></subdir>",
                        xml_escape(d)
                    )),
                }
            }
            s.push_str("</container>");
            s
        }
    };
    finish(format, h, body, rows.is_empty())
}

pub fn containers(
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    h: HeaderMap,
    account: &str,
    rows: &[ContainerRow],
) -> Response {
    let format = format_of(headers, query);
    let body = match format {
        Format::Plain => rows.iter().map(|r| format!("{}\n", r.name)).collect(),
        Format::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    if r.subdir {
                        return serde_json::json!({ "subdir": r.name });
                    }
                    serde_json::json!({
                        "name": r.name, "count": r.count, "bytes": r.bytes,
                        "last_modified": iso_date(r.created), "storage_policy": "Policy-0",
                    })
                })
                .collect();
            serde_json::Value::Array(items).to_string()
        }
        Format::Xml => {
            let mut s = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<account name=\"{}\">",
                xml_escape(account)
            );
            for r in rows {
                if r.subdir {
                    s.push_str(&format!(
                        "<subdir name=\"{0}\"><name>{0}</name></subdir>",
                        xml_escape(&r.name)
                    ));
                    continue;
                }
                s.push_str(&format!(
                    "<container><name>{}</name><count>{}</count><bytes>{}</bytes><last_modified>{}</last_modified><storage_policy>Policy-0</storage_policy></container>",
                    xml_escape(&r.name), r.count, r.bytes, iso_date(r.created)
                ));
            }
            s.push_str("</account>");
            s
        }
    };
    finish(format, h, body, rows.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_parameter_beats_accept() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let mut q = BTreeMap::new();
        assert_eq!(format_of(&h, &q), Format::Json);
        q.insert("format".to_string(), "xml".to_string());
        assert_eq!(format_of(&h, &q), Format::Xml);
        assert_eq!(
            format_of(&HeaderMap::new(), &BTreeMap::new()),
            Format::Plain
        );
    }

    #[test]
    fn xml_names_are_escaped() {
        assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}

#[cfg(test)]
mod select_tests {
    use super::*;

    fn names(rows: &[&str]) -> Vec<(String, ())> {
        rows.iter().map(|n| (n.to_string(), ())).collect()
    }

    fn shown(rows: Vec<Row<()>>) -> Vec<String> {
        rows.into_iter()
            .map(|r| match r {
                Row::Item(n, ()) => n,
                Row::Subdir(s) => format!("{s}*"),
            })
            .collect()
    }

    fn params(pairs: &[(&str, &str)]) -> ListParams {
        let q: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ListParams::from_query(&q, 100)
    }

    #[test]
    fn reverse_swaps_marker_roles() {
        let rows = names(&["a", "b", "c", "d"]);
        let p = params(&[("reverse", "on"), ("marker", "d"), ("end_marker", "a")]);
        assert_eq!(shown(select(rows, &p)), vec!["c", "b"]);
    }

    #[test]
    fn delimiter_rolls_up_once_per_prefix() {
        let rows = names(&["test", "test-bar", "test-foo", "tesu"]);
        let p = params(&[("delimiter", "-")]);
        assert_eq!(shown(select(rows, &p)), vec!["test", "test-*", "tesu"]);
    }

    #[test]
    fn path_lists_only_direct_children() {
        let rows = names(&["/a", "d/", "d/f", "d/s/", "d/s/g", "f"]);
        assert_eq!(
            shown(select(rows.clone(), &params(&[("path", "d")]))),
            vec!["d/f", "d/s/"]
        );
        assert_eq!(
            shown(select(rows, &params(&[("path", "")]))),
            vec!["d/", "f"]
        );
    }
}

/// A listing row as shown: a large object lists its assembled size (the content type's
/// `swift_bytes`) and its etag beside the manifest's (`slo_etag`).
struct Shown {
    bytes: u64,
    hash: String,
    slo_etag: Option<String>,
    content_type: String,
}

fn shown(e: &ListingEntry) -> Shown {
    let (ct, swift_bytes) = crate::slo::split_swift_bytes(&e.content_type);
    let mut parts = e.etag.split(';');
    let mut hash = parts.next().unwrap_or("").trim().to_string();
    let mut slo_etag = None;
    for p in parts {
        match p.trim().split_once('=') {
            Some(("slo_etag", v)) => slo_etag = Some(format!("\"{}\"", v.trim_matches('"'))),
            Some((k, v)) => hash.push_str(&format!("; {k}={v}")),
            None => {}
        }
    }
    Shown {
        bytes: swift_bytes.unwrap_or(e.size),
        hash,
        slo_etag,
        content_type: ct.to_string(),
    }
}
