//! Helpers shared by the channel tests: an independent matching oracle,
//! proptest strategies and a string-only serde serializer.

use globset::GlobBuilder;
use proptest::prelude::*;
use serde::ser::{Error, Impossible, Serialize, Serializer};

/// Pattern segments the property tests draw from: literals, `*`, `**` and
/// the main glob forms.
pub(crate) const PATTERN_SEGMENTS: &[&str] = &[
    "a", "b", "c", "ab", "*", "**", "a*", "*b", "{a,b}", "[ab]", "?", "?b", "[!a]",
];

/// Channel segments the property tests draw from. No `/`: the oracle maps
/// `:` to `/`, so a `/` inside a segment would confuse it.
pub(crate) const CHANNEL_SEGMENTS: &[&str] = &["a", "b", "c", "ab", "ba", "bb", "abc"];

/// Random pattern text of 1–5 segments.
pub(crate) fn pattern_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PATTERN_SEGMENTS), 1..=5).prop_map(|v| v.join(":"))
}

/// Random channel text of 1–6 segments.
pub(crate) fn channel_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(CHANNEL_SEGMENTS), 1..=6).prop_map(|v| v.join(":"))
}

/// Whether `pattern` matches `channel`, computed without any of the
/// module's code: the whole pattern becomes one globset glob with `:` mapped
/// to `/` and `literal_separator(true)`, so `*`, `?`, classes and
/// alternation stay within a segment and globset's own `**` handles runs of
/// segments.
///
/// Two adjustments bring globset's `**` in line with the grammar: runs of
/// `**` are collapsed first (globset would demand an empty segment between
/// them), and a trailing `a/**`, which in globset needs at least one more
/// segment, also matches `a` itself. Only valid for `/`-free inputs.
pub(crate) fn oracle_matches(pattern: &str, channel: &str) -> bool {
    let mut segments: Vec<&str> = Vec::new();
    for segment in pattern.split(':') {
        if segment == "**" && segments.last() == Some(&"**") {
            continue;
        }
        segments.push(segment);
    }
    let whole = glob_matches(&segments.join("/"), channel);
    let trailing = segments.len() > 1
        && segments.last() == Some(&"**")
        && glob_matches(&segments[..segments.len() - 1].join("/"), channel);
    whole || trailing
}

fn glob_matches(glob: &str, channel: &str) -> bool {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .expect("oracle glob compiles")
        .compile_matcher()
        .is_match(channel.replace(':', "/"))
}

/// Serializes `value` with a serializer that accepts nothing but a string,
/// proving a `Serialize` impl emits exactly one string.
pub(crate) fn serialize_str<T: Serialize>(value: &T) -> Result<String, NotAString> {
    value.serialize(StrOnly)
}

#[derive(Debug)]
pub(crate) struct NotAString;

impl std::fmt::Display for NotAString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a string")
    }
}

impl std::error::Error for NotAString {}

impl Error for NotAString {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NotAString
    }
}

struct StrOnly;

macro_rules! reject {
    ($($name:ident($($t:ty),*)),* $(,)?) => {$(
        fn $name(self, $(_: $t),*) -> Result<String, NotAString> {
            Err(NotAString)
        }
    )*};
}

type No = Impossible<String, NotAString>;

impl Serializer for StrOnly {
    type Ok = String;
    type Error = NotAString;
    type SerializeSeq = No;
    type SerializeTuple = No;
    type SerializeTupleStruct = No;
    type SerializeTupleVariant = No;
    type SerializeMap = No;
    type SerializeStruct = No;
    type SerializeStructVariant = No;

    fn serialize_str(self, v: &str) -> Result<String, NotAString> {
        Ok(v.to_owned())
    }

    reject!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<String, NotAString> {
        Err(NotAString)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<String, NotAString> {
        Err(NotAString)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, NotAString> {
        Err(NotAString)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<No, NotAString> {
        Err(NotAString)
    }
    fn serialize_tuple(self, _: usize) -> Result<No, NotAString> {
        Err(NotAString)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<No, NotAString> {
        Err(NotAString)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<No, NotAString> {
        Err(NotAString)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<No, NotAString> {
        Err(NotAString)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<No, NotAString> {
        Err(NotAString)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<No, NotAString> {
        Err(NotAString)
    }
}
