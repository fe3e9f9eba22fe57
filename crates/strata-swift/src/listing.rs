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
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
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

/// The smallest name greater than every name that starts with `p`.
fn after_prefix(p: &str) -> String {
    let mut s = p.to_string();
    s.push(char::MAX);
    s
}

/// Object rows honouring prefix, delimiter, marker, end_marker and limit.
pub async fn list_with_delimiter(
    objects: &ObjectService,
    account: &str,
    container: &str,
    query: &BTreeMap<String, String>,
    limit: usize,
) -> strata_object::Result<Vec<ObjectRow>> {
    let prefix = query.get("prefix").map(String::as_str).unwrap_or("");
    let delimiter = query.get("delimiter").filter(|d| !d.is_empty()).cloned();
    let end_marker = query.get("end_marker").filter(|m| !m.is_empty()).cloned();
    let mut marker = query.get("marker").filter(|m| !m.is_empty()).cloned();
    let mut out = Vec::new();
    while out.len() < limit {
        let want = limit - out.len();
        let rows = objects
            .list_objects(account, container, prefix, marker.as_deref(), end_marker.as_deref(), want)
            .await?;
        if rows.is_empty() {
            break;
        }
        let fetched = rows.len();
        let mut rolled_up = false;
        for (name, entry) in rows {
            let rest = &name[prefix.len()..];
            match delimiter.as_deref().and_then(|d| rest.find(d).map(|i| i + d.len())) {
                Some(cut) => {
                    let sub = format!("{prefix}{}", &rest[..cut]);
                    // Skip the rest of this subdirectory in the next page.
                    marker = Some(after_prefix(&sub));
                    out.push(ObjectRow::Subdir(sub));
                    rolled_up = true;
                    break;
                }
                None => {
                    marker = Some(name.clone());
                    out.push(ObjectRow::Object(name, entry));
                }
            }
        }
        if !rolled_up && fetched < want {
            break;
        }
    }
    Ok(out)
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
    let status = if empty && format == Format::Plain { StatusCode::NO_CONTENT } else { StatusCode::OK };
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
                    ObjectRow::Object(n, e) => serde_json::json!({
                        "name": n, "hash": e.etag, "bytes": e.size,
                        "content_type": e.content_type, "last_modified": iso_date(e.timestamp),
                    }),
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
                    ObjectRow::Object(n, e) => s.push_str(&format!(
                        "<object><name>{}</name><hash>{}</hash><bytes>{}</bytes><content_type>{}</content_type><last_modified>{}</last_modified></object>",
                        xml_escape(n), e.etag, e.size, xml_escape(&e.content_type), iso_date(e.timestamp)
                    )),
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
                    serde_json::json!({
                        "name": r.name, "count": r.count, "bytes": r.bytes,
                        "last_modified": iso_date(r.created),
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
                s.push_str(&format!(
                    "<container><name>{}</name><count>{}</count><bytes>{}</bytes><last_modified>{}</last_modified></container>",
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
        assert_eq!(format_of(&HeaderMap::new(), &BTreeMap::new()), Format::Plain);
    }

    #[test]
    fn xml_names_are_escaped() {
        assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
