//! The storage entries and the call the miner uses resolve, with the shapes it decodes them as,
//! in three runtimes' metadata: the local test runtime (spec 218, V14 and V15), a newer devnet
//! (spec 240) and current mainnet finney (V16). A mainnet node will not fail at start on a shape
//! change we could have seen. The metadata files are in tests/fixtures/chain/metadata.

use std::path::PathBuf;

use subxt::ext::codec::Decode;
use subxt::ext::scale_type_resolver::TypeResolver;
use subxt::metadata::Metadata;

fn metadata_files() -> Vec<(String, Metadata)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chain/metadata");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<_> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "scale")).collect();
    files.sort();
    assert!(files.len() >= 3, "expected the three runtimes' metadata in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let md = Metadata::decode(&mut &bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), md)
        })
        .collect()
}

/// A type's shape, reduced to what the miner's decoding depends on.
fn shape(md: &Metadata, id: u32) -> String {
    use subxt::ext::scale_type_resolver::{visitor, Primitive};
    let types = md.types();
    let v = visitor::new((), |_, _| "other".to_string())
        .visit_primitive(|_, p| {
            match p {
                Primitive::Bool => "bool",
                Primitive::U8 => "u8",
                Primitive::U16 => "u16",
                Primitive::U32 => "u32",
                Primitive::U64 => "u64",
                Primitive::U128 => "u128",
                _ => "primitive",
            }
            .to_string()
        })
        .visit_sequence(|_, _, inner| format!("Vec<{}>", shape(md, inner)))
        .visit_array(|_, inner, len| format!("[{}; {len}]", shape(md, inner)))
        .visit_composite(|_, _, fields| {
            let fields: Vec<String> =
                fields.map(|f| format!("{}:{}", f.name.unwrap_or("_"), shape(md, f.id))).collect();
            format!("{{{}}}", fields.join(","))
        })
        .visit_compact(|_, inner| format!("Compact<{}>", shape(md, inner)));
    types.resolve_type(id, v).unwrap()
}

fn entry_shapes(md: &Metadata, pallet: &str, entry: &str) -> (Vec<String>, String) {
    let p = md.pallet_by_name(pallet).unwrap_or_else(|| panic!("pallet {pallet}"));
    let e = p.storage().and_then(|s| s.entry_by_name(entry)).unwrap_or_else(|| panic!("{pallet}.{entry}"));
    let keys = e.keys().map(|k| shape(md, k.key_id)).collect();
    (keys, shape(md, e.value_ty()))
}

const ACCOUNT: &str = "{_:[u8; 32]}";

#[test]
fn every_storage_entry_the_miner_reads_has_the_shape_it_decodes() {
    for (name, md) in metadata_files() {
        let expect = |entry: &str, keys: &[&str], value: &str| {
            let (k, v) = entry_shapes(&md, "SubtensorModule", entry);
            assert_eq!(k, keys, "{name}: SubtensorModule.{entry} keys");
            assert_eq!(v, value, "{name}: SubtensorModule.{entry} value");
        };
        expect("SubnetworkN", &["u16"], "u16");
        expect("Uids", &["u16", ACCOUNT], "u16");
        expect("Keys", &["u16", "u16"], ACCOUNT);
        expect("ValidatorPermit", &["u16"], "Vec<bool>");
        expect("Incentive", &["u16"], "Vec<u16>");
        expect("TotalHotkeyAlpha", &[ACCOUNT, "u16"], "u64");
        let (k, v) = entry_shapes(&md, "SubtensorModule", "Axons");
        assert_eq!(k, ["u16", ACCOUNT], "{name}: Axons keys");
        for field in ["block:u64", "version:u32", "ip:u128", "port:u16", "ip_type:u8", "protocol:u8"] {
            assert!(v.contains(field), "{name}: Axons value {v} lacks {field}");
        }
        let (_, now) = entry_shapes(&md, "Timestamp", "Now");
        assert_eq!(now, "u64", "{name}: Timestamp.Now");
    }
}

#[test]
fn serve_axon_takes_the_arguments_the_miner_sends() {
    for (name, md) in metadata_files() {
        let p = md.pallet_by_name("SubtensorModule").unwrap();
        let call = p.call_variant_by_name("serve_axon").unwrap_or_else(|| panic!("{name}: serve_axon"));
        let args: Vec<String> = call
            .fields
            .iter()
            .map(|f| format!("{}:{}", f.name.clone().unwrap_or_default(), shape(&md, f.ty.id)))
            .collect();
        assert_eq!(
            args,
            [
                "netuid:u16",
                "version:u32",
                "ip:u128",
                "port:u16",
                "ip_type:u8",
                "protocol:u8",
                "placeholder1:u8",
                "placeholder2:u8"
            ],
            "{name}"
        );
    }
}
