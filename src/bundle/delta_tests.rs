//! Tests of `delta.rs`: chunks as FastCDC cuts them however fed, recipes
//! that rebuild any edit exactly, hostile recipes refused, signatures
//! stored and read back.

use super::*;
use crate::bundle::noise;
use proptest::prelude::*;

fn chunks_of(data: &[u8]) -> Vec<Chunk> {
    let mut c = Chunker::default();
    c.update(data);
    c.finish()
}

fn signature(data: &[u8]) -> Signature {
    Signature {
        size: data.len() as u64,
        hash: *blake3::hash(data).as_bytes(),
        chunks: chunks_of(data),
    }
}

/// What the receiver does: the recipe over the old version and data.
fn rebuild(recipe: &Recipe, old: &[u8], data: &[u8]) -> Vec<u8> {
    let (mut out, mut at) = (Vec::new(), 0usize);
    for p in recipe.pieces() {
        match *p {
            Piece::Copy { from, len } => {
                out.extend_from_slice(&old[from as usize..(from + len) as usize])
            }
            Piece::Data { len } => {
                out.extend_from_slice(&data[at..at + len as usize]);
                at += len as usize;
            }
        }
    }
    out
}

/// The data that travels for `new` under `recipe`.
fn data_of(recipe: &Recipe, new: &[u8]) -> Vec<u8> {
    let ranges = recipe.data_ranges();
    let pick = |&(at, len): &(u64, u64)| &new[at as usize..(at + len) as usize];
    ranges.iter().flat_map(pick).copied().collect()
}

#[test]
fn fed_in_any_pieces_the_chunks_are_fastcdcs_of_the_whole() {
    let data = noise(3 << 20, 7);
    let whole: Vec<Chunk> = fastcdc::v2020::FastCDC::new(&data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
        .map(|c| Chunk {
            len: c.length as u32,
            hash: xxhash_rust::xxh3::xxh3_128(&data[c.offset..c.offset + c.length]).to_le_bytes(),
        })
        .collect();
    for step in [1usize, 4096, 100_000, CHUNK_MAX, 1 << 20, data.len()] {
        let mut c = Chunker::default();
        data.chunks(step).for_each(|s| c.update(s));
        assert_eq!(c.finish(), whole, "fed {step} bytes at a time");
    }
    assert!(whole.len() > 20, "{} chunks", whole.len());
}

#[test]
fn a_region_changed_in_the_middle_sends_about_that_region() {
    let old = noise(8 << 20, 1);
    let mut new = old.clone();
    let mid = new.len() / 2;
    new[mid..mid + (1 << 20)].copy_from_slice(&noise(1 << 20, 2));
    let recipe = Recipe::plan(&signature(&old), &chunks_of(&new));
    let sent = recipe.data_len();
    assert!(
        (1 << 20..(1 << 20) + 2 * CHUNK_MAX as u64).contains(&sent),
        "{sent} bytes travel"
    );
    assert_eq!(recipe.pieces().len(), 3, "{recipe}");
    assert_eq!(rebuild(&recipe, &old, &data_of(&recipe, &new)), new);
}

#[test]
fn an_insertion_moves_only_the_chunks_around_it() {
    let old = noise(8 << 20, 3);
    let mut new = old.clone();
    new.splice(1000..1000, noise(777, 4));
    let recipe = Recipe::plan(&signature(&old), &chunks_of(&new));
    assert!(recipe.data_len() < 2 * CHUNK_MAX as u64, "{recipe}");
    assert_eq!(rebuild(&recipe, &old, &data_of(&recipe, &new)), new);
}

#[test]
fn a_change_scattered_wider_than_the_pieces_allow_sends_short_copies_as_data() {
    let old = noise(16 << 20, 5);
    let mut new = old.clone();
    for k in 0..200 {
        new[k * 80_000] ^= 1;
    }
    let recipe = Recipe::plan(&signature(&old), &chunks_of(&new));
    assert!(
        recipe.pieces().len() <= MAX_PIECES,
        "{}",
        recipe.pieces().len()
    );
    assert_eq!(rebuild(&recipe, &old, &data_of(&recipe, &new)), new);
    let text = recipe.to_string();
    let parsed = Recipe::parse(&text, old.len() as u64, new.len() as u64);
    assert_eq!(parsed, Ok(recipe));
}

#[test]
fn hostile_recipes_are_refused() {
    let bad = [
        ("", RecipeError::Parse(0)),
        ("d0", RecipeError::Parse(0)),
        ("c1+0", RecipeError::Parse(0)),
        ("x5", RecipeError::Parse(0)),
        ("d5,,d5", RecipeError::Parse(1)),
        ("c-1+5", RecipeError::Parse(0)),
        ("d+5", RecipeError::Parse(0)),
        ("c99999999999999999999+1", RecipeError::Parse(0)),
        ("c18446744073709551615+1", RecipeError::OutsideBase(100)),
        ("c96+5", RecipeError::OutsideBase(100)),
        (
            "d18446744073709551615,d1",
            RecipeError::Size {
                made: u64::MAX,
                size: 10,
            },
        ),
        ("d5,c0+4", RecipeError::Size { made: 9, size: 10 }),
    ];
    for (text, why) in bad {
        assert_eq!(Recipe::parse(text, 100, 10), Err(why), "{text:?}");
    }
    let long = vec!["d1"; MAX_PIECES + 1].join(",");
    assert_eq!(
        Recipe::parse(&long, 0, MAX_PIECES as u64 + 1),
        Err(RecipeError::TooLong(MAX_PIECES + 1))
    );
    assert!(Recipe::parse("d5,c95+5", 100, 10).is_ok());
}

#[test]
fn a_stored_signature_reads_back_for_its_path_only_and_never_torn() {
    let sig = signature(&noise(1 << 20, 9));
    let bytes = sig.encode("media/a.mp4");
    assert_eq!(Signature::decode(&bytes, "media/a.mp4"), Some(sig));
    assert_eq!(Signature::decode(&bytes, "media/b.mp4"), None);
    for cut in [0, 1, 8, bytes.len() / 2, bytes.len() - 1] {
        assert_eq!(Signature::decode(&bytes[..cut], "media/a.mp4"), None);
    }
    let mut flipped = bytes.clone();
    flipped[40] ^= 1;
    assert_eq!(Signature::decode(&flipped, "media/a.mp4"), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn any_edit_rebuilds_exactly(
        seed in 1u64..1000,
        edits in prop::collection::vec((0usize..(2 << 20), 0usize..5000, 0usize..5000), 0..6),
    ) {
        let old = noise(2 << 20, seed);
        let mut new = old.clone();
        for (at, cut, insert) in edits {
            let at = at.min(new.len());
            let end = (at + cut).min(new.len());
            new.splice(at..end, noise(insert, seed + at as u64));
        }
        let recipe = Recipe::plan(&signature(&old), &chunks_of(&new));
        prop_assert!(recipe.pieces().len() <= MAX_PIECES);
        prop_assert_eq!(recipe.pieces().iter().map(Piece::bytes).sum::<u64>(), new.len() as u64);
        let text = recipe.to_string();
        if !new.is_empty() {
            let parsed = Recipe::parse(&text, old.len() as u64, new.len() as u64).unwrap();
            prop_assert_eq!(&parsed, &recipe);
        }
        prop_assert_eq!(rebuild(&recipe, &old, &data_of(&recipe, &new)), new);
    }
}
