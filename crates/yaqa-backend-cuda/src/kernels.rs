//! The kernel files of `cuda/`, embedded in the binary, and the loading of their PTX into a context.
//!
//! Every `.cu` file is embedded as source (`include_str!`). When the build script found nvcc, PTX for
//! sm_90a and compute_80 is embedded too and used as is; otherwise each file is compiled with NVRTC the
//! first time a context needs it, for the device's own compute capability, and the PTX is cached for the
//! rest of the process. [`compile_all`] is what the `kernels_compile` test and `cargo xtask nvrtc-check`
//! run: it needs the NVRTC library but no GPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::error::CudaError;

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// One kernel file: its stem in `cuda/`, its source, and the entry points the host code loads from it.
#[derive(Debug)]
pub struct KernelFile {
    pub stem: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
}

/// Every kernel file, in the order of the build script's `KERNEL_FILES`.
pub const KERNEL_FILES: [KernelFile; 5] = [
    KernelFile {
        stem: "sketch",
        source: include_str!("../../../cuda/sketch.cu"),
        entries: &["gram_tf32x3", "gram_f32", "row_quadratic_f32"],
    },
    KernelFile {
        stem: "round",
        source: include_str!("../../../cuda/round.cu"),
        entries: &["round_wavefront_step"],
    },
    KernelFile {
        stem: "hadamard",
        source: include_str!("../../../cuda/hadamard.cu"),
        entries: &[
            "scale_cols_f32",
            "scale_cols_f64",
            "fwht_segments_f32",
            "fwht_segments_f64",
            "base_mix_f32",
            "base_mix_f64",
        ],
    },
    KernelFile {
        stem: "layout",
        source: include_str!("../../../cuda/layout.cu"),
        entries: &[
            "transpose_f32",
            "transpose_f64",
            "unpack_sym_f64",
            "unpack_sym_f32",
            "pack_lower_f32",
            "pack_lower_f64",
            "diff_widen",
        ],
    },
    KernelFile {
        stem: "proxy",
        source: include_str!("../../../cuda/proxy.cu"),
        entries: &["dot_partial_f64"],
    },
];

/// Whether the build embedded nvcc PTX.
pub fn nvcc_used() -> bool {
    ptx::NVCC_USED
}

/// NVRTC's `--gpu-architecture` value for a compute capability (NVRTC wants a `&'static str`). Devices
/// newer than the table get the newest entry, whose PTX the driver JIT-compiles forward.
pub fn nvrtc_arch(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (8, _) => "compute_80",
        (9, _) => "compute_90",
        _ => "compute_90",
    }
}

/// Whether the NVRTC library can be loaded (cudarc loads it dynamically; without this check it panics).
pub fn nvrtc_available() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on the candidate library names and drops the handles;
    // it touches no CUDA state.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles one kernel file with NVRTC for `arch` (`compute_80`, `compute_90`, ...), checking that the
/// PTX defines every entry point the host loads.
///
/// **Errors**: [`CudaError::LibraryMissing`] without NVRTC; [`CudaError::Compile`] with NVRTC's log.
pub fn compile_file(file: &KernelFile, arch: &'static str) -> Result<Ptx, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::LibraryMissing {
            library: "libnvrtc",
            hint: "install NVRTC (scripts/nvrtc.sh) and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        });
    }
    let opts = CompileOptions {
        arch: Some(arch),
        // IEEE division and square root: the quantizer's arithmetic must match the host's.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        options: vec!["-std=c++17".into()],
        name: Some(format!("{}.cu", file.stem)),
        ..CompileOptions::default()
    };
    let ptx = compile_ptx_with_opts(file.source, opts).map_err(|e| CudaError::Compile {
        file: file.stem,
        arch,
        log: match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => other.to_string(),
        },
    })?;
    let text = ptx.to_src();
    for entry in file.entries {
        if !text.contains(&format!(".entry {entry}(")) {
            return Err(CudaError::Compile {
                file: file.stem,
                arch,
                log: format!("the PTX defines no entry point `{entry}`"),
            });
        }
    }
    Ok(ptx)
}

/// Compiles every kernel file for `arch`, returning each file's PTX size in bytes.
///
/// **Errors**: the first file that fails, as [`compile_file`].
pub fn compile_all(arch: &'static str) -> Result<Vec<(&'static str, usize)>, CudaError> {
    KERNEL_FILES
        .iter()
        .map(|file| compile_file(file, arch).map(|ptx| (file.stem, ptx.to_src().len())))
        .collect()
}

/// NVRTC PTX per (file, arch), compiled once per process.
fn nvrtc_cached(file: &KernelFile, arch: &'static str) -> Result<String, CudaError> {
    static CACHE: OnceLock<Mutex<HashMap<(&'static str, &'static str), String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // A panic while the lock was held cannot leave the map inconsistent (insert is the only write).
    if let Some(ptx) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(file.stem, arch))
    {
        return Ok(ptx.clone());
    }
    let ptx = compile_file(file, arch)?.to_src();
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((file.stem, arch), ptx.clone());
    Ok(ptx)
}

/// The PTX text of file `index` for a device of compute capability `(major, minor)`.
fn ptx_for(index: usize, major: i32, minor: i32) -> Result<String, CudaError> {
    let file = &KERNEL_FILES[index];
    let aot = if major == 9 && minor == 0 {
        ptx::PTX_SM90A[index]
    } else {
        ptx::PTX_SM80[index]
    };
    match aot {
        Some(text) => Ok(text.to_string()),
        None => nvrtc_cached(file, nvrtc_arch(major, minor)),
    }
}

/// Every entry point of every kernel file, loaded into one context.
#[derive(Debug)]
pub struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
}

impl Kernels {
    /// Loads all kernel files into `ctx`.
    ///
    /// **Errors**: NVRTC missing or failing (when nvcc PTX is absent), or the driver rejecting the PTX.
    pub fn load(ctx: &Arc<CudaContext>, major: i32, minor: i32) -> Result<Self, CudaError> {
        let mut functions = HashMap::new();
        for (index, file) in KERNEL_FILES.iter().enumerate() {
            let ptx = ptx_for(index, major, minor)?;
            let module = ctx
                .load_module(Ptx::from_src(ptx))
                .map_err(|e| CudaError::driver(format!("loading module {}", file.stem), e))?;
            for &entry in file.entries {
                let function = module.load_function(entry).map_err(|e| {
                    CudaError::driver(format!("loading {entry} from {}", file.stem), e)
                })?;
                // `transpose_f32` exists once, in layout.cu; names are unique across files.
                functions.insert(entry, function);
            }
        }
        Ok(Self { functions })
    }

    /// The loaded function `name`.
    ///
    /// **Errors**: [`CudaError::MissingKernel`] for a name no kernel file declares (a bug in this crate).
    pub fn get(&self, name: &'static str) -> Result<&CudaFunction, CudaError> {
        self.functions
            .get(name)
            .ok_or(CudaError::MissingKernel { name })
    }
}
