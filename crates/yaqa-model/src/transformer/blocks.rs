//! A decoder's blocks, either resident in memory or streamed from their checkpoint one block at a time.
//!
//! A resident model holds every block widened to its element type, which is what a 135M model wants and
//! an 8B model cannot afford (32 GB in f32). A streamed model holds a [`BlockLoader`] instead: the block
//! is read from its file (mmap, in the file's own dtype) and widened when the forward or backward pass
//! reaches it, and the `keep` most recently used blocks stay cached, so peak memory is `keep` blocks plus
//! activations whatever the depth. Both look the same to the decoder: [`Blocks::get`] hands out a
//! [`Block`] that derefs to the block's weights (`T`: the decoder's `LayerWeights`, which this module
//! does not need to know).

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use crate::error::{ModelError, Result};

/// Produces one block's weights on demand (reading and widening them from a checkpoint).
pub trait BlockLoader<T>: Send + Sync + fmt::Debug {
    /// The weights of block `index`, checked (shapes, finite values) with errors naming file and tensor.
    fn load(&self, index: usize) -> Result<T>;
}

/// One block's weights, borrowed from a resident model or shared with a streamed model's cache.
#[derive(Debug)]
pub enum Block<'a, T> {
    Borrowed(&'a T),
    Shared(Arc<T>),
}

impl<T> Deref for Block<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Block::Borrowed(b) => b,
            Block::Shared(b) => b,
        }
    }
}

/// The blocks of a model (see the module docs).
pub struct Blocks<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Resident(Vec<T>),
    Streamed(Streamed<T>),
}

struct Streamed<T> {
    len: usize,
    loader: Arc<dyn BlockLoader<T>>,
    keep: usize,
    /// Most recently used last.
    cache: Mutex<VecDeque<(usize, Arc<T>)>>,
    /// Blocks read from the loader so far (each cache miss), for tests and the memory report.
    loads: Mutex<usize>,
}

impl<T> Blocks<T> {
    /// Blocks held in memory.
    pub fn resident(layers: Vec<T>) -> Self {
        Self {
            inner: Inner::Resident(layers),
        }
    }

    /// `len` blocks read from `loader` when needed, the `keep` most recently used kept in memory.
    pub fn streamed(len: usize, loader: Arc<dyn BlockLoader<T>>, keep: usize) -> Self {
        Self {
            inner: Inner::Streamed(Streamed {
                len,
                loader,
                keep,
                cache: Mutex::new(VecDeque::new()),
                loads: Mutex::new(0),
            }),
        }
    }

    /// The number of blocks.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Resident(v) => v.len(),
            Inner::Streamed(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the blocks are read from their checkpoint on demand.
    pub fn is_streamed(&self) -> bool {
        matches!(self.inner, Inner::Streamed(_))
    }

    /// How many blocks a streamed model has read from its loader so far (0 for a resident one).
    pub fn loads(&self) -> usize {
        match &self.inner {
            Inner::Resident(_) => 0,
            Inner::Streamed(s) => *s.loads.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Block `index`.
    ///
    /// **Errors**: an index past the end, and for a streamed model whatever its loader reports.
    pub fn get(&self, index: usize) -> Result<Block<'_, T>> {
        match &self.inner {
            Inner::Resident(v) => v.get(index).map(Block::Borrowed).ok_or_else(|| {
                ModelError::Input(format!("block {index} of a model with {}", v.len()))
            }),
            Inner::Streamed(s) => s.get(index).map(Block::Shared),
        }
    }

    /// The blocks, when they are resident.
    pub fn as_resident(&self) -> Option<&[T]> {
        match &self.inner {
            Inner::Resident(v) => Some(v),
            Inner::Streamed(_) => None,
        }
    }

    /// The blocks, mutably, when they are resident.
    pub fn as_resident_mut(&mut self) -> Option<&mut Vec<T>> {
        match &mut self.inner {
            Inner::Resident(v) => Some(v),
            Inner::Streamed(_) => None,
        }
    }

    /// Every block in memory: a streamed model reads all of them (the caller has decided it fits).
    ///
    /// **Errors**: the loader's.
    pub fn into_resident(self) -> Result<Vec<T>>
    where
        T: Clone,
    {
        match self.inner {
            Inner::Resident(v) => Ok(v),
            Inner::Streamed(s) => (0..s.len)
                .map(|i| s.get(i).map(Arc::unwrap_or_clone))
                .collect(),
        }
    }
}

/// Indexing reaches a resident model's blocks, like a `Vec`'s.
///
/// # Panics
/// On a streamed model (use [`Blocks::get`]) and past the end.
impl<T> std::ops::Index<usize> for Blocks<T> {
    type Output = T;
    fn index(&self, index: usize) -> &T {
        match &self.inner {
            Inner::Resident(v) => &v[index],
            Inner::Streamed(_) => panic!("indexing a streamed model's blocks; use Blocks::get"),
        }
    }
}

/// # Panics
/// On a streamed model and past the end.
impl<T> std::ops::IndexMut<usize> for Blocks<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        match &mut self.inner {
            Inner::Resident(v) => &mut v[index],
            Inner::Streamed(_) => panic!("indexing a streamed model's blocks; use Blocks::get"),
        }
    }
}

impl<T> Streamed<T> {
    fn get(&self, index: usize) -> Result<Arc<T>> {
        if index >= self.len {
            return Err(ModelError::Input(format!(
                "block {index} of a model with {}",
                self.len
            )));
        }
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pos) = cache.iter().position(|(i, _)| *i == index) {
                let hit = cache.remove(pos).expect("position is in range");
                let block = hit.1.clone();
                cache.push_back(hit);
                return Ok(block);
            }
            // Make room before loading, so that the new block never coexists with a full cache.
            while self.keep > 0 && cache.len() >= self.keep {
                cache.pop_front();
            }
            if self.keep == 0 {
                cache.clear();
            }
        }
        let block = Arc::new(self.loader.load(index)?);
        *self.loads.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        if self.keep > 0 {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((index, block.clone()));
        }
        Ok(block)
    }
}

impl<T: Clone> Clone for Blocks<T> {
    /// A resident model is copied; a streamed one shares its loader and starts with an empty cache.
    fn clone(&self) -> Self {
        match &self.inner {
            Inner::Resident(v) => Self::resident(v.clone()),
            Inner::Streamed(s) => Self::streamed(s.len, s.loader.clone(), s.keep),
        }
    }
}

impl<T: PartialEq> PartialEq for Blocks<T> {
    /// Resident blocks compare by value; streamed ones are equal when they share a loader.
    fn eq(&self, other: &Self) -> bool {
        match (&self.inner, &other.inner) {
            (Inner::Resident(a), Inner::Resident(b)) => a == b,
            (Inner::Streamed(a), Inner::Streamed(b)) => {
                a.len == b.len && Arc::ptr_eq(&a.loader, &b.loader)
            }
            _ => false,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Blocks<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Resident(v) => f.debug_tuple("Resident").field(&v.len()).finish(),
            Inner::Streamed(s) => f
                .debug_struct("Streamed")
                .field("len", &s.len)
                .field("keep", &s.keep)
                .field("loader", &s.loader)
                .finish(),
        }
    }
}
