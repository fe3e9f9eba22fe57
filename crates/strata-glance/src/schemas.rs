//! The JSON-schema documents of `/v2/schemas/*`, describing exactly what the image and
//! member views carry.

use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};
use strata_image::{CONTAINER_FORMATS, DISK_FORMATS, VISIBILITIES};

use crate::{not_found, reply, Result};

fn nullable_string(description: &str, max: Option<u64>) -> Value {
    let mut v = json!({"type": ["null", "string"], "description": description});
    if let Some(m) = max {
        v["maxLength"] = json!(m);
    }
    v
}

fn read_only(mut v: Value) -> Value {
    v["readOnly"] = json!(true);
    v
}

fn image() -> Value {
    let mut disk: Vec<Value> = vec![Value::Null];
    disk.extend(DISK_FORMATS.iter().map(|f| json!(f)));
    let mut container: Vec<Value> = vec![Value::Null];
    container.extend(CONTAINER_FORMATS.iter().map(|f| json!(f)));
    json!({
        "name": "image",
        "properties": {
            "id": {"type": "string", "description": "An identifier for the image",
                   "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
            "name": nullable_string("Descriptive name for the image", Some(255)),
            "status": read_only(json!({"type": "string", "description": "Status of the image",
                "enum": ["queued", "saving", "active", "deactivated"]})),
            "visibility": {"type": "string", "description": "Scope of image accessibility",
                "enum": VISIBILITIES},
            "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
            "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list response."},
            "checksum": read_only(nullable_string("md5 hash of image contents.", Some(32))),
            "os_hash_algo": read_only(nullable_string("Algorithm to calculate the os_hash_value", Some(64))),
            "os_hash_value": read_only(nullable_string("Hexdigest of the image contents using the algorithm specified by the os_hash_algo", Some(128))),
            "owner": nullable_string("Owner of the image", Some(255)),
            "size": read_only(json!({"type": ["null", "integer"], "description": "Size of image file in bytes"})),
            "virtual_size": read_only(json!({"type": ["null", "integer"], "description": "Virtual size of image in bytes"})),
            "container_format": {"type": ["null", "string"], "description": "Format of the container", "enum": container},
            "disk_format": {"type": ["null", "string"], "description": "Format of the disk", "enum": disk},
            "created_at": read_only(json!({"type": "string", "description": "Date and time of image registration"})),
            "updated_at": read_only(json!({"type": "string", "description": "Date and time of the last image modification"})),
            "tags": {"type": "array", "description": "List of strings related to the image",
                     "items": {"type": "string", "maxLength": 255}},
            "direct_url": read_only(json!({"type": "string", "description": "URL to access the image file kept in external store"})),
            "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
            "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
            "self": read_only(json!({"type": "string", "description": "An image self url"})),
            "file": read_only(json!({"type": "string", "description": "An image file url"})),
            "schema": read_only(json!({"type": "string", "description": "An image schema url"})),
        },
        "additionalProperties": {"type": "string"},
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    })
}

fn member() -> Value {
    json!({
        "name": "member",
        "properties": {
            "image_id": {"type": "string", "description": "An identifier for the image"},
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "status": {"type": "string", "description": "The status of this image member",
                       "enum": ["pending", "accepted", "rejected"]},
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
            "schema": {"type": "string", "readOnly": true},
        },
    })
}

fn list_of(name: &str, item: Value) -> Value {
    json!({
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    })
}

pub(crate) fn get(name: &str) -> Result<Response> {
    let doc = match name {
        "image" => image(),
        "images" => list_of("images", image()),
        "member" => member(),
        "members" => list_of("members", member()),
        _ => return Err(not_found(format!("No schema named {name}"))),
    };
    Ok(reply(StatusCode::OK, doc))
}
