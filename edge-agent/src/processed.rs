//! `processed/`: each analysed scan, kept as the source of truth for its result until
//! the hub has acknowledged it (a result the outbox loses is rebuilt from it), then
//! pruned by age and size within `[intake] processed_budget_bytes`. A scan keeps its
//! place below the inbox (`<patient folder>/`), its file name prefixed with its
//! result id: `processed/<patient>/<32 hex>--<original name>` (the `--` tells it from
//! an exporter's own hex-named files kept from before).

use std::path::{Path, PathBuf};

use pleura_shared::ResultId;

const SEP: &str = "--";

/// The name a scan gets in processed/.
pub fn file_name(id: &ResultId, original: &str) -> String {
    format!("{id}{SEP}{original}")
}

/// The result id and original name of a file in processed/, if it has the layout.
pub fn parse_name(name: &str) -> Option<(ResultId, &str)> {
    let (hex, rest) = name.split_at_checked(32)?;
    let rest = rest.strip_prefix(SEP)?;
    let id = ResultId::from_slice(&hex::decode(hex).ok()?).ok()?;
    (!rest.is_empty()).then_some((id, rest))
}

/// The result id of a processed scan at `path`.
pub fn id_of(path: &Path) -> Option<ResultId> {
    parse_name(path.file_name()?.to_str()?).map(|(id, _)| id)
}

/// Where the scan was in the inbox: `inbox/<patient>/<original name>` (what the
/// patient pseudonym and zone are derived from when it is analysed again).
pub fn inbox_path(processed_dir: &Path, inbox: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(processed_dir).ok()?;
    let (_, original) = parse_name(rel.file_name()?.to_str()?)?;
    Some(inbox.join(rel).with_file_name(original))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_id_and_give_back_the_inbox_place() {
        let id = ResultId::random();
        let name = file_name(&id, "scan_R1.png");
        assert_eq!(parse_name(&name), Some((id, "scan_R1.png")));
        // An exporter's own hex-named file is not taken for one.
        assert_eq!(parse_name(&format!("{id}.png")), None);
        assert_eq!(parse_name(&format!("{id}--")), None);
        let p = Path::new("/d/processed/P1").join(&name);
        assert_eq!(
            inbox_path(Path::new("/d/processed"), Path::new("/in"), &p),
            Some(PathBuf::from("/in/P1/scan_R1.png"))
        );
    }
}
