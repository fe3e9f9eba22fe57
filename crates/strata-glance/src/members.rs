//! Image members: the owner of a `shared` image names the projects it is shared with; each
//! such project accepts or rejects it (only accepted images appear in its default list).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};
use strata_image::{self as image, member_key, ImageRecord, MemberRecord, MEMBERS};
use strata_meta::{Check, Op, Txn};

use crate::images::visible;
use crate::{bad_request, conflict, fault, forbidden, image_fault, not_found, reply, Req, Result};

/// Glance's default `image_member_quota`.
const MEMBERS_MAX: usize = 128;

fn view(m: &MemberRecord) -> Value {
    json!({
        "image_id": m.image_id,
        "member_id": m.member_id,
        "status": m.status,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "schema": "/v2/schemas/member",
    })
}

/// The image, which must be `shared` to have members.
async fn shared(req: &Req, id: &str) -> Result<ImageRecord> {
    let (rec, _) = visible(req, id).await?;
    if rec.visibility != "shared" {
        return Err(forbidden(format!(
            "Only shared images have members; image {id} is {}.",
            rec.visibility
        )));
    }
    Ok(rec)
}

fn no_member(id: &str, member: &str) -> crate::Fault {
    not_found(format!("{member} is not a member of image {id}"))
}

pub(crate) async fn list(req: &Req, id: &str) -> Result<Response> {
    let rec = shared(req, id).await?;
    let caller = req.caller();
    let all = image::members(req.gw.meta.as_ref(), id)
        .await
        .map_err(image_fault)?;
    // A member sees its own row only; the owner and admins see every row.
    let rows: Vec<Value> = all
        .iter()
        .filter(|m| caller.may_change(&rec) || m.member_id == caller.project)
        .map(view)
        .collect();
    Ok(reply(
        StatusCode::OK,
        json!({"members": rows, "schema": "/v2/schemas/members"}),
    ))
}

pub(crate) async fn add(req: &Req, id: &str, body: Body) -> Result<Response> {
    req.require_writer()?;
    let rec = shared(req, id).await?;
    if !req.caller().may_change(&rec) {
        return Err(forbidden(format!(
            "You are not permitted to share image {id}."
        )));
    }
    let v = req.json(body).await?;
    let member = match v.get("member") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
        _ => {
            return Err(bad_request(
                "The request body needs \"member\": the project to share the image with.",
            ))
        }
    };
    let meta = req.gw.meta.as_ref();
    if image::members(meta, id).await.map_err(image_fault)?.len() >= MEMBERS_MAX {
        return Err(fault(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Maximum number of image members exceeded: {MEMBERS_MAX}"),
        ));
    }
    let now = image::now();
    let row = MemberRecord {
        image_id: id.into(),
        member_id: member.clone(),
        status: "pending".into(),
        created_at: now.clone(),
        updated_at: now,
    };
    let key = member_key(id, &member);
    let out = meta
        .write(Txn {
            checks: vec![
                Check::Absent {
                    table: MEMBERS.into(),
                    key: key.clone(),
                },
                Check::Present {
                    table: image::IMAGES.into(),
                    key: id.into(),
                },
            ],
            ops: vec![Op::Put {
                table: MEMBERS.into(),
                key,
                value: image::encode(&row),
            }],
        })
        .await
        .map_err(|e| image_fault(e.into()))?;
    if !out.succeeded {
        return Err(conflict(format!(
            "Member {member} already exists for image {id}, or the image is gone"
        )));
    }
    Ok(reply(StatusCode::OK, view(&row)))
}

/// The row of `member` if the caller may see it (the owner, an admin, or the member).
async fn row(req: &Req, id: &str, member: &str) -> Result<(ImageRecord, MemberRecord, Vec<u8>)> {
    let rec = shared(req, id).await?;
    let caller = req.caller();
    if !caller.may_change(&rec) && caller.project != member {
        return Err(no_member(id, member));
    }
    let (m, raw) = image::member(req.gw.meta.as_ref(), id, member)
        .await
        .map_err(image_fault)?
        .ok_or_else(|| no_member(id, member))?;
    Ok((rec, m, raw))
}

pub(crate) async fn show(req: &Req, id: &str, member: &str) -> Result<Response> {
    let (_, m, _) = row(req, id, member).await?;
    Ok(reply(StatusCode::OK, view(&m)))
}

pub(crate) async fn update(req: &Req, id: &str, member: &str, body: Body) -> Result<Response> {
    req.require_writer()?;
    let (_, mut m, raw) = row(req, id, member).await?;
    if req.ctx.project_id != member {
        return Err(forbidden(
            "Only the member itself may accept or reject a shared image.",
        ));
    }
    let v = req.json(body).await?;
    let status = match v.get("status").and_then(Value::as_str) {
        Some(s @ ("pending" | "accepted" | "rejected")) => s.to_string(),
        _ => {
            return Err(bad_request(
                "Invalid status: expected pending, accepted or rejected",
            ))
        }
    };
    m.status = status;
    m.updated_at = image::now();
    let key = member_key(id, member);
    let out = req
        .gw
        .meta
        .write(Txn {
            checks: vec![Check::Equals {
                table: MEMBERS.into(),
                key: key.clone(),
                value: raw,
            }],
            ops: vec![Op::Put {
                table: MEMBERS.into(),
                key,
                value: image::encode(&m),
            }],
        })
        .await
        .map_err(|e| image_fault(e.into()))?;
    if !out.succeeded {
        return Err(conflict("The membership changed meanwhile; try again."));
    }
    Ok(reply(StatusCode::OK, view(&m)))
}

pub(crate) async fn remove(req: &Req, id: &str, member: &str) -> Result<Response> {
    req.require_writer()?;
    let (rec, _, raw) = row(req, id, member).await?;
    if !req.caller().may_change(&rec) {
        return Err(forbidden(format!(
            "You are not permitted to unshare image {id}."
        )));
    }
    let key = member_key(id, member);
    req.gw
        .meta
        .write(Txn {
            checks: vec![Check::Equals {
                table: MEMBERS.into(),
                key: key.clone(),
                value: raw,
            }],
            ops: vec![Op::Delete {
                table: MEMBERS.into(),
                key,
            }],
        })
        .await
        .map_err(|e| image_fault(e.into()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
