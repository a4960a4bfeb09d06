//! Whether maps another agent pinned fit the programs this agent loads (the built-in
//! object, or `--xdp-object`'s): every map the balancer uses must be pinned with the key
//! size, value size, entries and flags that object (with this agent's sizes) defines, or
//! the program would read them with another layout.

use std::path::Path;

/// A pinned map that differs from what this build expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub map: &'static str,
    pub what: String,
}

impl Difference {
    /// The difference in an operator's words, with the setting that decides the map's
    /// size where one does.
    pub fn explain(&self) -> String {
        let from = match self.map {
            lbx_common::maps::RINGS => " (--ring-entries)",
            lbx_common::maps::FLOWS => " (--flows)",
            _ => "",
        };
        format!("{} {}{from}", self.map, self.what)
    }
}

/// The differences between the maps pinned under `dir` and those `object` defines, with
/// `sizes` overriding the entries of some (the ring and connection-table sizes).
pub fn compare(
    object: &[u8],
    dir: &Path,
    names: &[&'static str],
    sizes: &[(&'static str, u32)],
) -> Vec<Difference> {
    let obj = match aya_obj::Object::parse(object) {
        Ok(o) => o,
        Err(e) => {
            return vec![Difference {
                map: "(object)",
                what: format!("this build's object does not parse: {e}"),
            }];
        }
    };
    let mut out = Vec::new();
    for &map in names {
        let Some(want) = obj.maps.get(map) else {
            continue;
        };
        let entries = sizes
            .iter()
            .find(|(n, _)| *n == map)
            .map_or(want.max_entries(), |(_, s)| *s);
        let have = match aya::maps::MapInfo::from_pin(dir.join(map)) {
            Ok(info) => info,
            Err(_) => {
                out.push(Difference {
                    map,
                    what: "not pinned".to_owned(),
                });
                continue;
            }
        };
        for (field, pinned, wanted) in [
            ("key size", have.key_size(), want.key_size()),
            ("value size", have.value_size(), want.value_size()),
            ("entries", have.max_entries(), entries),
            ("flags", have.map_flags(), want.map_flags()),
        ] {
            if pinned != wanted {
                out.push(Difference {
                    map,
                    what: format!("{field} {pinned} pinned, {wanted} in this build"),
                });
            }
        }
    }
    out
}
