//! Reading the JSON headers yaqa writes into its files (under the safetensors metadata key `"yaqa"`):
//! format and version checks and typed fields, every error naming the file and the field.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// A parsed header and the file it came from.
pub(crate) struct Header<'a> {
    pub path: &'a Path,
    pub json: &'a Value,
}

impl<'a> Header<'a> {
    /// Checks `format` and `version`.
    pub fn new(path: &'a Path, json: &'a Value, format: &str, version: u64) -> Result<Self> {
        let h = Self { path, json };
        if json["format"] != format || json["version"] != version {
            return Err(h.bad(format!(
                "format {} version {}: expected {format} version {version}",
                json["format"], json["version"]
            )));
        }
        Ok(h)
    }

    /// A format error naming the file.
    pub fn bad(&self, why: String) -> ModelError {
        ModelError::format(self.path, why)
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.json[key]
            .as_u64()
            .ok_or_else(|| self.bad(format!("header field {key:?} is missing or not an integer")))
    }

    /// A size or count: an integer that fits `usize` (no silent truncation on a 32-bit target).
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.u64(key)?;
        usize::try_from(v).map_err(|_| self.bad(format!("header field {key:?} = {v} is too large")))
    }

    /// A dimension: a [`Header::usize`] that is not zero.
    pub fn dim(&self, key: &str) -> Result<usize> {
        match self.usize(key)? {
            0 => Err(self.bad(format!("header field {key:?} is 0"))),
            v => Ok(v),
        }
    }

    pub fn string(&self, key: &str) -> Result<String> {
        self.json[key]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad(format!("header field {key:?} is missing or not a string")))
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.json[key]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.bad(format!("header field {key:?} is not a list of strings")))
    }
}
