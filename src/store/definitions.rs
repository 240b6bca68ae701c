//! Job definitions and their versions (docs/api.md, "Job definitions"): a PUT's new version (or
//! none, for the same document again), a retire, the reads, and the start's one read.

use super::*;
use crate::domain::DefinitionName;

/// A definition as stored, with one of its versions.
#[derive(Debug, Clone)]
pub struct DefinitionRecord {
    pub name: DefinitionName,
    pub latest: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    /// The version read (the latest, unless another was asked for).
    pub version: i32,
    pub document: Value,
    pub version_created_at: DateTime<Utc>,
}

impl DefinitionRecord {
    /// The version's description (its document's).
    pub fn description(&self) -> Option<&str> {
        self.document.get("description").and_then(Value::as_str)
    }
}

/// What a PUT did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A new definition (version 1) or a new version of one.
    Created(i32),
    /// The document is the latest version's: no new version (a retired definition is back).
    Same(i32),
}

const COLUMNS: &str = "d.name, d.latest, d.created_at, d.updated_at, \
    d.retired_at, v.version, v.document, v.created_at AS version_created_at";

fn from_row(row: &tokio_postgres::Row) -> Result<DefinitionRecord> {
    let name: String = row.try_get("name")?;
    Ok(DefinitionRecord {
        name: DefinitionName::try_from(name).map_err(corrupt)?,
        latest: row.try_get("latest")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        retired_at: row.try_get("retired_at")?,
        version: row.try_get("version")?,
        document: row.try_get("document")?,
        version_created_at: row.try_get("version_created_at")?,
    })
}

/// Store `document` as the definition's next version, unless it is the latest one already
/// (`hash` equal): either way the definition is not retired any more. One transaction, the
/// definition's row locked, so that two PUTs at once make two versions or one, never a gap.
pub async fn put_definition(
    client: &mut deadpool_postgres::Client,
    name: &DefinitionName,
    document: &Value,
    hash: &str,
) -> Result<Put> {
    let tx = client.transaction().await?;
    let created = tx
        .query_opt(
            "INSERT INTO job_definitions (name, latest, created_at, updated_at)
             VALUES ($1, 1, now(), now())
             ON CONFLICT (name) DO NOTHING RETURNING name",
            &[&name.as_str()],
        )
        .await?;
    let outcome = if created.is_some() {
        tx.execute(
            "INSERT INTO job_definition_versions (name, version, document, document_hash, created_at)
             VALUES ($1, 1, $2, $3, now())",
            &[&name.as_str(), document, &hash],
        )
        .await?;
        Put::Created(1)
    } else {
        let row = tx
            .query_one(
                "SELECT d.latest, v.document_hash FROM job_definitions d
                 JOIN job_definition_versions v ON v.name = d.name AND v.version = d.latest
                 WHERE d.name = $1 FOR UPDATE OF d",
                &[&name.as_str()],
            )
            .await?;
        let latest: i32 = row.try_get("latest")?;
        let latest_hash: String = row.try_get("document_hash")?;
        if latest_hash == hash {
            tx.execute(
                "UPDATE job_definitions SET retired_at = NULL, updated_at = now()
                 WHERE name = $1 AND retired_at IS NOT NULL",
                &[&name.as_str()],
            )
            .await?;
            Put::Same(latest)
        } else {
            let next = latest + 1;
            tx.execute(
                "INSERT INTO job_definition_versions (name, version, document, document_hash, created_at)
                 VALUES ($1, $2, $3, $4, now())",
                &[&name.as_str(), &next, document, &hash],
            )
            .await?;
            tx.execute(
                "UPDATE job_definitions SET latest = $2, retired_at = NULL, updated_at = now()
                 WHERE name = $1",
                &[&name.as_str(), &next],
            )
            .await?;
            Put::Created(next)
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// The definition with its latest version (`version` `None`) or the one asked for; `None` when
/// there is no such definition or version.
pub async fn get_definition(
    client: &impl GenericClient,
    name: &DefinitionName,
    version: Option<i32>,
) -> Result<Option<DefinitionRecord>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM job_definitions d
             JOIN job_definition_versions v ON v.name = d.name
                 AND v.version = COALESCE($2::int, d.latest)
             WHERE d.name = $1"
        ))
        .await?;
    client
        .query_opt(&stmt, &[&name.as_str(), &version])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Whether the definition exists, and its latest version (for telling an unknown version from
/// an unknown definition).
pub async fn latest_version(
    client: &impl GenericClient,
    name: &DefinitionName,
) -> Result<Option<i32>> {
    Ok(client
        .query_opt(
            "SELECT latest FROM job_definitions WHERE name = $1",
            &[&name.as_str()],
        )
        .await?
        .map(|r| r.try_get("latest"))
        .transpose()?)
}

/// Retire the definition (kept as it was retired first when it already is); `None`: no such
/// definition.
pub async fn retire_definition(
    client: &impl GenericClient,
    name: &DefinitionName,
) -> Result<Option<()>> {
    let n = client
        .execute(
            "UPDATE job_definitions
             SET retired_at = COALESCE(retired_at, now()),
                 updated_at = CASE WHEN retired_at IS NULL THEN now() ELSE updated_at END
             WHERE name = $1",
            &[&name.as_str()],
        )
        .await?;
    Ok((n > 0).then_some(()))
}

/// A page of definitions by name, after `after` (the last name of the page before), with their
/// latest versions.
pub async fn list_definitions(
    client: &impl GenericClient,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<DefinitionRecord>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM job_definitions d
             JOIN job_definition_versions v ON v.name = d.name AND v.version = d.latest
             WHERE $1::text IS NULL OR d.name > $1::text
             ORDER BY d.name LIMIT $2"
        ))
        .await?;
    client
        .query(&stmt, &[&after, &limit])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// A definition's versions, oldest first: each number and when it was written.
pub async fn list_versions(
    client: &impl GenericClient,
    name: &DefinitionName,
) -> Result<Vec<(i32, DateTime<Utc>)>> {
    client
        .query(
            "SELECT version, created_at FROM job_definition_versions
             WHERE name = $1 ORDER BY version",
            &[&name.as_str()],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get("version")?, r.try_get("created_at")?)))
        .collect()
}
