//! `coracle images`, `coracle tag`, `coracle rmi`.

use std::collections::HashMap;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::output::{ago, human_size, parse_rfc3339};
use super::CmdResult;
use crate::digest::Digest;
use crate::image::lookup::{self, Removed};
use crate::reference::Reference;
use crate::store::Store;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Output format: a table for people, a JSON array for scripts
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// The image: a name, an ID (prefix) or a digest
    image: String,
    /// The new name
    name: String,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Names, IDs or digests
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn images(store: &Store, a: ImagesArgs) -> CmdResult {
    let records = store.list_images()?;
    let mut names: HashMap<Digest, Vec<Reference>> = HashMap::new();
    for (r, d) in store.list_refs()? {
        names.entry(d).or_default().push(r);
    }
    match a.format {
        Format::Json => {
            let arr: Vec<_> = records
                .iter()
                .map(|r| {
                    let n: Vec<String> = names.get(&r.digest).into_iter().flatten().map(|x| x.to_string()).collect();
                    json!({
                        "id": r.digest.hex(),
                        "names": n,
                        "digest": r.digest,
                        "config": r.config,
                        "size": r.size,
                        "created": r.created,
                        "layers": r.layers.len(),
                        "platform": r.platform.to_string(),
                        "loaded": r.loaded,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&arr).expect("json"));
        }
        Format::Table => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            let mut rows =
                vec![["REPOSITORY".to_owned(), "TAG".into(), "IMAGE ID".into(), "CREATED".into(), "SIZE".into()]];
            for r in &records {
                let created =
                    r.created.as_deref().and_then(parse_rfc3339).map_or_else(|| "N/A".into(), |t| ago(t, now));
                let row = |repo: String, tag: String| {
                    [repo, tag, r.digest.short().to_owned(), created.clone(), human_size(r.size)]
                };
                match names.get(&r.digest) {
                    None => rows.push(row("<none>".into(), "<none>".into())),
                    Some(ns) => {
                        for n in ns {
                            rows.push(row(n.repository(), n.tag().unwrap_or("<none>").to_owned()));
                        }
                    }
                }
            }
            print_table(&rows);
        }
    }
    Ok(0)
}

fn print_table(rows: &[[String; 5]]) {
    print_rows(rows)
}

/// Left-aligned columns, three spaces apart, as docker prints tables.
pub fn print_rows<const N: usize>(rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 4 { c.clone() } else { format!("{c:<width$}", width = w[i]) })
            .collect();
        println!("{}", line.join("   "));
    }
}

pub fn tag(store: &Store, a: TagArgs) -> CmdResult {
    lookup::tag(store, &a.image, &a.name)?;
    Ok(0)
}

pub fn rmi(store: &Store, state_dir: &std::path::Path, a: RmiArgs) -> CmdResult {
    let in_use: Vec<(Digest, String)> = crate::run::state::list(state_dir)?
        .into_iter()
        .filter_map(|s| Some((s.image_digest.parse().ok()?, s.name)))
        .collect();
    for arg in &a.images {
        for r in lookup::remove(store, arg, &in_use)? {
            match r {
                Removed::Untagged(n) => println!("Untagged: {n}"),
                Removed::Deleted(d) => println!("Deleted: {d}"),
            }
        }
    }
    Ok(0)
}
