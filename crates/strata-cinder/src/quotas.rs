//! Quotas (`os-quota-sets`) and `/limits`. Usage is counted from the records at the time of
//! the request: two creations racing at the edge of a quota can both pass.

use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use crate::model::{self, BackupRecord, QuotaRecord, SnapshotRecord, VolumeRecord, QUOTAS};
use crate::{bad_request, fault, meta_fault, put, reply, Req, Result};

/// Resources and their default limits (-1: unlimited).
const DEFAULTS: &[(&str, i64)] = &[
    ("volumes", 10),
    ("gigabytes", 1000),
    ("snapshots", 10),
    ("backups", 10),
    ("backup_gigabytes", 1000),
    ("per_volume_gigabytes", -1),
    ("groups", 10),
];

async fn overrides(req: &Req, project: &str) -> Result<(QuotaRecord, Option<Vec<u8>>)> {
    let raw = req.gw.meta.get(QUOTAS, project).await.map_err(meta_fault)?;
    Ok(match raw {
        Some(raw) => (model::decode(&raw).unwrap_or_default(), Some(raw)),
        None => (QuotaRecord::default(), None),
    })
}

fn limits_of(q: &QuotaRecord) -> BTreeMap<&'static str, i64> {
    DEFAULTS
        .iter()
        .map(|(k, d)| (*k, q.limits.get(*k).copied().unwrap_or(*d)))
        .collect()
}

async fn scan<T: for<'de> serde::Deserialize<'de>>(req: &Req, table: &str) -> Result<Vec<T>> {
    Ok(req
        .gw
        .meta
        .scan(table, "", None, usize::MAX)
        .await
        .map_err(meta_fault)?
        .into_iter()
        .filter_map(|(_, raw)| model::decode(&raw))
        .collect())
}

/// What a project uses now, per resource.
async fn usage(req: &Req, project: &str) -> Result<BTreeMap<&'static str, i64>> {
    let vols: Vec<VolumeRecord> = scan(req, model::VOLUMES).await?;
    let snaps: Vec<SnapshotRecord> = scan(req, model::SNAPSHOTS).await?;
    let backups: Vec<BackupRecord> = scan(req, model::BACKUPS).await?;
    let vols: Vec<_> = vols.iter().filter(|v| v.project_id == project).collect();
    let snaps: Vec<_> = snaps.iter().filter(|s| s.project_id == project).collect();
    let backups: Vec<_> = backups.iter().filter(|b| b.project_id == project).collect();
    let mut u = BTreeMap::new();
    u.insert("volumes", vols.len() as i64);
    u.insert(
        "gigabytes",
        vols.iter().map(|v| v.size as i64).sum::<i64>()
            + snaps.iter().map(|s| s.size as i64).sum::<i64>(),
    );
    u.insert("snapshots", snaps.len() as i64);
    u.insert("backups", backups.len() as i64);
    u.insert(
        "backup_gigabytes",
        backups.iter().map(|b| b.size as i64).sum(),
    );
    u.insert("per_volume_gigabytes", 0);
    u.insert("groups", 0);
    Ok(u)
}

/// Refuse (413) a request that would take the caller's project over a limit.
pub(crate) async fn check(req: &Req, wanted: &[(&str, i64)]) -> Result<()> {
    let (q, _) = overrides(req, &req.project).await?;
    let limits = limits_of(&q);
    let used = usage(req, &req.project).await?;
    for (resource, delta) in wanted {
        let limit = limits.get(resource).copied().unwrap_or(-1);
        let in_use = used.get(resource).copied().unwrap_or(0);
        if limit >= 0 && in_use + delta > limit {
            let what = match *resource {
                "gigabytes" | "backup_gigabytes" => format!(
                    "Requested volume or snapshot exceeds allowed {resource} quota. Requested {delta}G, quota is {limit}G and {in_use}G has been consumed."
                ),
                _ => format!(
                    "Maximum number of {resource} allowed ({limit}) exceeded for quota '{resource}'."
                ),
            };
            return Err(fault(StatusCode::PAYLOAD_TOO_LARGE, what));
        }
    }
    Ok(())
}

pub(crate) async fn limits(req: &Req) -> Result<Response> {
    let (q, _) = overrides(req, &req.project).await?;
    let l = limits_of(&q);
    let u = usage(req, &req.project).await?;
    Ok(reply(
        StatusCode::OK,
        json!({"limits": {"rate": [], "absolute": {
            "maxTotalVolumes": l["volumes"],
            "maxTotalSnapshots": l["snapshots"],
            "maxTotalVolumeGigabytes": l["gigabytes"],
            "maxTotalBackups": l["backups"],
            "maxTotalBackupGigabytes": l["backup_gigabytes"],
            "totalVolumesUsed": u["volumes"],
            "totalSnapshotsUsed": u["snapshots"],
            "totalGigabytesUsed": u["gigabytes"],
            "totalBackupsUsed": u["backups"],
            "totalBackupGigabytesUsed": u["backup_gigabytes"],
        }}}),
    ))
}

fn quota_set(
    project: &str,
    limits: &BTreeMap<&str, i64>,
    used: Option<&BTreeMap<&str, i64>>,
) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(project));
    for (k, limit) in limits {
        let v = match used {
            Some(u) => {
                json!({"limit": limit, "in_use": u.get(k).copied().unwrap_or(0), "reserved": 0, "allocated": 0})
            }
            None => json!(limit),
        };
        m.insert((*k).into(), v);
    }
    json!({"quota_set": m})
}

/// `/os-quota-sets/{project}[/defaults]`: show (own project, any for admins), update and
/// reset (admins).
pub(crate) async fn route(req: &Req, rest: &[&str]) -> Result<Response> {
    let (project, defaults) = match rest {
        [p] => (*p, false),
        [p, "defaults"] => (*p, true),
        _ => return Err(crate::not_found("The resource could not be found.")),
    };
    if project != req.ctx.project_id && !req.is_admin() {
        return Err(crate::forbidden(
            "Policy doesn't allow this operation to be performed.",
        ));
    }
    match (req.method.clone(), defaults) {
        (Method::GET, true) => {
            let l = limits_of(&QuotaRecord::default());
            Ok(reply(StatusCode::OK, quota_set(project, &l, None)))
        }
        (Method::GET, false) => {
            let (q, _) = overrides(req, project).await?;
            let with_usage = req
                .query
                .get("usage")
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            let used = if with_usage {
                Some(usage(req, project).await?)
            } else {
                None
            };
            Ok(reply(
                StatusCode::OK,
                quota_set(project, &limits_of(&q), used.as_ref()),
            ))
        }
        (Method::PUT, false) => {
            req.require_admin()?;
            let body = req.body_object("quota_set")?;
            let (mut q, raw) = overrides(req, project).await?;
            for (k, v) in &body {
                if k == "tenant_id" || k == "id" {
                    continue;
                }
                if !DEFAULTS.iter().any(|(d, _)| d == k) {
                    return Err(bad_request(format!("Bad key(s) {k} in quota_set")));
                }
                let n = v
                    .as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .filter(|n| *n >= -1)
                    .ok_or_else(|| {
                        bad_request(format!(
                            "Quota limit {v} for {k} must be an integer of at least -1."
                        ))
                    })?;
                q.limits.insert(k.clone(), n);
            }
            let check = match raw {
                Some(raw) => crate::unchanged(QUOTAS, project, raw),
                None => strata_meta::Check::Absent {
                    table: QUOTAS.into(),
                    key: project.into(),
                },
            };
            req.commit(
                vec![check],
                vec![put(QUOTAS, project, model::encode(&q))],
                "Quota set",
            )
            .await?;
            let mut v = quota_set(project, &limits_of(&q), None);
            if let Some(m) = v["quota_set"].as_object_mut() {
                m.remove("id");
            }
            Ok(reply(StatusCode::OK, v))
        }
        (Method::DELETE, false) => {
            req.require_admin()?;
            req.commit(vec![], vec![crate::del(QUOTAS, project)], "Quota set")
                .await?;
            Ok(crate::volumes::accepted())
        }
        _ => Err(fault(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for this resource.",
        )),
    }
}
