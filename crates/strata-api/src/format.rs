//! Response format negotiation.

/// A response body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
    Plain,
}

impl Format {
    /// The format of a media type (`application/json`, `text/xml`, `text/plain`, ...).
    pub fn from_media_type(media: &str) -> Option<Format> {
        let media = media
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json" => Some(Format::Json),
            m if m.starts_with("application/") && m.ends_with("+json") => Some(Format::Json),
            "application/xml" | "text/xml" => Some(Format::Xml),
            m if m.starts_with("application/") && m.ends_with("+xml") => Some(Format::Xml),
            "text/plain" => Some(Format::Plain),
            _ => None,
        }
    }

    /// The format of a `format=` query value (Swift: `json`, `xml`, `plain`).
    pub fn from_name(name: &str) -> Option<Format> {
        match name.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "xml" => Some(Format::Xml),
            "plain" | "text" => Some(Format::Plain),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json; charset=utf-8",
            Format::Xml => "application/xml; charset=utf-8",
            Format::Plain => "text/plain; charset=utf-8",
        }
    }
}

/// The best format an `Accept` header asks for, by q value; `default` for a missing
/// header, `*/*` or nothing known.
pub fn from_accept(accept: Option<&str>, default: Format) -> Format {
    let Some(accept) = accept else { return default };
    let mut best: Option<(f32, Format)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let format = match Format::from_media_type(media) {
            Some(f) => f,
            None if media == "*/*" || media == "application/*" => default,
            None => continue,
        };
        if best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, format));
        }
    }
    best.map_or(default, |(_, f)| f)
}

/// Negotiate the format of a request: a `.json` / `.xml` suffix on the path beats the
/// `Accept` header. Returns the format and the path without the suffix.
pub fn negotiate<'a>(path: &'a str, accept: Option<&str>, default: Format) -> (Format, &'a str) {
    if let Some(p) = path.strip_suffix(".json") {
        return (Format::Json, p);
    }
    if let Some(p) = path.strip_suffix(".xml") {
        return (Format::Xml, p);
    }
    (from_accept(accept, default), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_beats_accept() {
        assert_eq!(
            negotiate("/v2.1/servers.json", Some("application/xml"), Format::Xml),
            (Format::Json, "/v2.1/servers")
        );
        assert_eq!(
            negotiate("/v2.1/servers.xml", Some("application/json"), Format::Json),
            (Format::Xml, "/v2.1/servers")
        );
    }

    #[test]
    fn accept_without_suffix() {
        let n = |a| negotiate("/v1/AUTH_x", a, Format::Plain).0;
        assert_eq!(n(None), Format::Plain);
        assert_eq!(n(Some("application/json")), Format::Json);
        assert_eq!(n(Some("text/xml")), Format::Xml);
        assert_eq!(n(Some("*/*")), Format::Plain);
        assert_eq!(n(Some("image/png")), Format::Plain);
        assert_eq!(
            n(Some("text/plain;q=0.5, application/json;q=0.9")),
            Format::Json
        );
        assert_eq!(
            n(Some("application/json;q=0, application/xml")),
            Format::Xml
        );
        assert_eq!(
            n(Some("application/vnd.openstack.identity-v3+json")),
            Format::Json
        );
    }

    #[test]
    fn names() {
        assert_eq!(Format::from_name("JSON"), Some(Format::Json));
        assert_eq!(Format::from_name("xml"), Some(Format::Xml));
        assert_eq!(Format::from_name("yaml"), None);
    }
}
