//! CPU-only: every WGSL program of the wgpu backend parses and validates with naga, uses no
//! floating-point types (nothing a kernel computes may depend on WGSL's loose float rules),
//! no subgroup operations and no float atomics. Runs everywhere, GPU or not.

use leam_compute::numerics::gpu::shaders::SHADERS;

#[test]
fn every_shader_parses_and_validates_with_naga() {
    assert!(!SHADERS.is_empty());
    for shader in SHADERS {
        let module = naga::front::wgsl::parse_str(shader.source)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        );
        if let Err(e) = validator.validate(&module) {
            panic!("{}: {}", shader.name, e.emit_to_string(shader.source));
        }
        for entry in shader.entries {
            assert!(
                module
                    .entry_points
                    .iter()
                    .any(|ep| ep.name == *entry && ep.stage == naga::ShaderStage::Compute),
                "{}: compute entry point {entry} missing",
                shader.name
            );
        }
    }
}

#[test]
fn shaders_are_integer_only() {
    for shader in SHADERS {
        let module = naga::front::wgsl::parse_str(shader.source).expect("parses");
        for (_, ty) in module.types.iter() {
            let float = match &ty.inner {
                naga::TypeInner::Scalar(s)
                | naga::TypeInner::Vector { scalar: s, .. }
                | naga::TypeInner::Atomic(s) => s.kind == naga::ScalarKind::Float,
                naga::TypeInner::Matrix { .. } => true,
                _ => false,
            };
            assert!(!float, "{}: float type {:?}", shader.name, ty.inner);
        }
        let code: String = shader
            .source
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for forbidden in ["subgroup", "f32", "f16", "quad"] {
            assert!(
                !code.contains(forbidden),
                "{}: uses '{forbidden}'",
                shader.name
            );
        }
    }
}

#[test]
fn exp2_table_wgsl_is_generated_from_the_integer_tables() {
    use leam_compute::numerics::gpu::shaders::{exp2_table_wgsl, EXP2_TABLE_WGSL};
    let want = exp2_table_wgsl();
    if std::env::var("LEAM_REGEN_WGSL").as_deref() == Ok("1") {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/numerics/gpu/exp2_table.wgsl"
        );
        std::fs::write(path, &want).expect("write exp2_table.wgsl");
        return;
    }
    assert_eq!(
        EXP2_TABLE_WGSL, want,
        "exp2_table.wgsl differs from fixed::exp2_tables(); regenerate (see its header)"
    );
}
