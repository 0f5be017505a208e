//! GGUF container parsing: header, metadata key/values, tensor infos and the data section.
//!
//! Layout (v2/v3, little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata entries, the tensor infos, padding to `general.alignment`, then the tensor data.
//! Every read is bounds-checked so that a truncated or corrupt file yields a `Format` error that
//! says what was cut, never a panic or an out-of-range slice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::dequant::GgmlType;
use crate::error::{EngineError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal but never deeply nested in practice; the cap keeps a corrupt file
/// from recursing without bound.
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float (integers convert too). An f32 converts through its shortest decimal
    /// form, so that `1e-5` stored as f32 reads back as the `1e-5` of the original config rather
    /// than `9.99999974e-6`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => v.to_string().parse().ok(),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the tensor-info table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as stored: innermost first (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte range in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// The shape in row-major (Hugging Face) order: the stored dimensions reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// The parsed header of a GGUF file (the tensor data stays in the caller's memory map).
#[derive(Debug)]
pub struct GgufHeader {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    /// Tensor name -> index into `tensors`.
    index: HashMap<String, usize>,
    pub data_offset: usize,
}

impl GgufHeader {
    /// Parses `bytes` (the whole file) and checks that every tensor lies inside it.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut cur = Cursor { bytes, pos: 0, path };
        let version = read_preamble(&mut cur)?;
        let tensor_count = cur.u64("header (tensor count)")?;
        let kv_count = cur.u64("header (metadata count)")?;
        let mut metadata = HashMap::new();
        for i in 0..kv_count {
            let (key, value) = read_kv(&mut cur, i)?;
            metadata.insert(key, value);
        }
        let alignment = alignment(&metadata, path)?;
        let raw = (0..tensor_count).map(|i| read_tensor_info(&mut cur, i)).collect::<Result<Vec<_>>>()?;
        let data_offset = align_up(cur.pos as u64, alignment);
        let tensors = raw
            .into_iter()
            .map(|r| r.place(data_offset, alignment, bytes.len() as u64, path))
            .collect::<Result<Vec<_>>>()?;
        let mut index = HashMap::new();
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(EngineError::format(path, format!("tensor {} appears twice", t.name)));
            }
        }
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors, index, data_offset: data_offset as usize })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn error(&self, message: String) -> EngineError {
        EngineError::format(&self.path, message)
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        let value = self.metadata.get(key).ok_or_else(|| self.error(format!("metadata {key} is missing")))?;
        value.as_str().ok_or_else(|| self.error(format!("metadata {key} is {value:?}, expected a string")))
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.error(format!("metadata {key} is missing")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(value) = self.metadata.get(key) else { return Ok(None) };
        let n = value.as_u64().and_then(|n| usize::try_from(n).ok());
        n.map(Some).ok_or_else(|| self.error(format!("metadata {key} is {value:?}, expected a non-negative integer")))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(value) = self.metadata.get(key) else { return Ok(None) };
        value.as_f64().map(Some).ok_or_else(|| self.error(format!("metadata {key} is {value:?}, expected a number")))
    }
}

fn read_preamble(cur: &mut Cursor) -> Result<u32> {
    let magic = cur.take(4, "header (magic)")?;
    if magic != MAGIC {
        return Err(cur.error(format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")));
    }
    let version = cur.u32("header (version)")?;
    if !(2..=3).contains(&version) {
        return Err(cur.error(format!("GGUF version {version} is not supported (supported: 2, 3)")));
    }
    Ok(version)
}

fn read_kv(cur: &mut Cursor, index: u64) -> Result<(String, Value)> {
    let key = cur.string(&format!("metadata key #{index}"))?;
    let what = format!("metadata value {key}");
    let type_id = cur.u32(&what)?;
    let value = cur.value(type_id, &what, 0)?;
    Ok((key, value))
}

fn alignment(metadata: &HashMap<String, Value>, path: &Path) -> Result<u64> {
    let Some(value) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64() {
        Some(a) if a.is_power_of_two() => Ok(a),
        _ => Err(EngineError::format(path, format!("general.alignment {value:?} is not a power of two"))),
    }
}

/// A tensor info before its offset is resolved against the data section.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
}

fn read_tensor_info(cur: &mut Cursor, index: u64) -> Result<RawTensorInfo> {
    let name = cur.string(&format!("tensor info #{index} (name)"))?;
    let what = format!("tensor info {name}");
    let n_dims = cur.u32(&what)?;
    if n_dims > MAX_DIMS {
        return Err(cur.error(format!("tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")));
    }
    let dims = (0..n_dims).map(|_| cur.u64(&what)).collect::<Result<Vec<_>>>()?;
    let type_id = cur.u32(&what)?;
    let ggml_type = GgmlType::from_id(type_id)
        .ok_or_else(|| cur.error(format!("tensor {name} has unknown ggml type id {type_id}")))?;
    let offset = cur.u64(&what)?;
    Ok(RawTensorInfo { name, dims, ggml_type, offset })
}

impl RawTensorInfo {
    /// Resolves the absolute byte range and checks it lies inside a file of `file_len` bytes.
    fn place(self, data_offset: u64, alignment: u64, file_len: u64, path: &Path) -> Result<TensorInfo> {
        let name = &self.name;
        let err = |message: String| EngineError::format(path, message);
        if !self.offset.is_multiple_of(alignment) {
            return Err(err(format!(
                "tensor {name}: offset {} is not a multiple of the alignment {alignment}",
                self.offset
            )));
        }
        let len = self.ggml_type.byte_size(&self.dims).map_err(|m| err(format!("tensor {name}: {m}")))?;
        let start = data_offset.checked_add(self.offset);
        let end = start.and_then(|s| s.checked_add(len));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(err(format!("tensor {name}: offset {} and size {len} overflow", self.offset)));
        };
        if end > file_len {
            return Err(err(format!("truncated: tensor {name} needs bytes {start}..{end} but file has ..{file_len}")));
        }
        Ok(TensorInfo {
            name: self.name,
            dims: self.dims,
            ggml_type: self.ggml_type,
            start: start as usize,
            len: len as usize,
        })
    }
}

fn align_up(pos: u64, alignment: u64) -> u64 {
    pos.div_ceil(alignment) * alignment
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn error(&self, message: String) -> EngineError {
        EngineError::format(PathBuf::from(self.path), message)
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let file_len = self.bytes.len();
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= file_len as u64);
        let Some(end) = end else {
            let want = (self.pos as u64).saturating_add(n);
            return Err(
                self.error(format!("truncated: {what} needs bytes {}..{want} but file has ..{file_len}", self.pos))
            );
        };
        let slice = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returns exactly N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error(format!("{what}: string is not valid UTF-8")))
    }

    fn value(&mut self, type_id: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => Value::Bool(self.array::<1>(what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => self.array_value(what, depth)?,
            10 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.error(format!("{what}: unknown metadata value type {other}"))),
        })
    }

    fn array_value(&mut self, what: &str, depth: usize) -> Result<Value> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.error(format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
        }
        let item_type = self.u32(what)?;
        let count = self.u64(what)?;
        // No pre-allocation from the untrusted count: every item consumes at least one byte, so a
        // corrupt count runs into the end of the file instead of exhausting memory.
        let mut items = Vec::new();
        for _ in 0..count {
            items.push(self.value(item_type, what, depth + 1)?);
        }
        Ok(Value::Array(items))
    }
}
