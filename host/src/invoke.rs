//! Calls of a program's exported functions by name: `name(arg, …)` with
//! the arguments in WAVE, the WebAssembly Value Encoding that
//! `wasmtime run --invoke` takes (wasmtime's `wave` support, for core
//! `Val`s and component `Val`s alike). Results come back in WAVE, one per
//! line, as the task's returned output.
//!
//! The parent checks a call against the program's types before the task
//! starts ([`check`]), so a wrong name or argument is a start error naming
//! what is wrong; the store parses it again against the instance's
//! function ([`Invocation`]), at either isolation level.

use wasmtime::component::wasm_wave::untyped::UntypedFuncCall;
use wasmtime::component::wasm_wave::wasm::WasmValue;
use wasmtime::component::{self, wasm_wave};
use wasmtime::{AsContextMut, ExternType, Store};

use crate::error::Error;
use crate::host_fn::wave_writable_type;
use crate::program::{Program, ProgramKind, Resolved};
use crate::state::TaskState;

/// A call split into the export's name and its argument list (WAVE, with
/// its parentheses). The name is taken as written up to the first `(`, so
/// core exports may have any name without one.
fn split(call: &str) -> Result<(&str, &str), String> {
    let call = call.trim();
    let Some(open) = call.find('(') else {
        return Err(format!(
            "`{call}` is not a call: write `name(arg, …)`, `name()` for none"
        ));
    };
    let name = call[..open].trim();
    if name.is_empty() {
        return Err(format!("`{call}` names no function"));
    }
    Ok((name, &call[open..]))
}

/// The arguments of a call, parsed against `types`.
fn params<'t, V: WasmValue + 'static>(
    args: &str,
    types: impl IntoIterator<Item = &'t V::Type, IntoIter: ExactSizeIterator>,
) -> Result<Vec<V>, String> {
    // WAVE parses whole calls; give it one with a plain name.
    let text = format!("f{args}");
    let call = UntypedFuncCall::parse(&text)
        .map_err(|e| format!("cannot parse the arguments {args}: {e}"))?;
    call.to_wasm_params::<V>(types)
        .map_err(|e| format!("the arguments {args} do not fit the function: {e}"))
}

/// The export's names, for an error that lists what there is.
fn export_names(program: &Program) -> Vec<String> {
    match &program.inner.kind {
        ProgramKind::Module { pre, .. } => pre
            .module()
            .exports()
            .filter(|e| matches!(e.ty(), ExternType::Func(_)))
            .map(|e| e.name().to_owned())
            .collect(),
        ProgramKind::Shared { .. } => Vec::new(),
        ProgramKind::Component { pre, .. } => {
            let component = pre.component();
            let mut names = Vec::new();
            for (name, item) in component.component_type().exports(component.engine()) {
                match item.ty {
                    component::types::ComponentItem::ComponentFunc(_) => {
                        names.push(name.to_owned())
                    }
                    component::types::ComponentItem::ComponentInstance(instance) => {
                        for (func, item) in instance.exports(component.engine()) {
                            if let component::types::ComponentItem::ComponentFunc(_) = item.ty {
                                names.push(format!("{name}#{func}"));
                            }
                        }
                    }
                    _ => {}
                }
            }
            names
        }
    }
}

/// A component function's type, by `name` or `instance#name`.
fn component_func(program: &Program, name: &str) -> Option<component::types::ComponentFunc> {
    let ProgramKind::Component { pre, .. } = &program.inner.kind else {
        return None;
    };
    let component = pre.component();
    let engine = component.engine();
    let (instance, func) = match name.rsplit_once('#') {
        Some((instance, func)) => (Some(instance), func),
        None => (None, name),
    };
    let ty = component.component_type();
    let item = match instance {
        None => ty.get_export(engine, func)?.ty,
        Some(instance) => match ty.get_export(engine, instance)?.ty {
            component::types::ComponentItem::ComponentInstance(i) => i.get_export(engine, func)?.ty,
            _ => return None,
        },
    };
    match item {
        component::types::ComponentItem::ComponentFunc(f) => Some(f),
        _ => None,
    }
}

/// The entry a task of `program` starts at, with a call by name checked
/// against the program's exports and types ([`check`]).
///
/// # Errors
///
/// As [`Program::resolve_entry`] and [`check`].
pub(crate) fn resolve(program: &Program, entry: crate::spec::Entry) -> Result<Resolved, Error> {
    let resolved = program.resolve_entry(entry)?;
    if let Resolved::Invoke(call) = &resolved {
        check(program, call)?;
    }
    Ok(resolved)
}

/// Checks `call` against `program`'s exports and their types.
///
/// # Errors
///
/// [`Error::InvalidSpec`] for field `invoke`, saying what is wrong: a call
/// that does not parse, a function the program does not export (listing
/// those it does), or arguments that do not fit its parameters.
pub(crate) fn check(program: &Program, call: &str) -> Result<(), Error> {
    let invalid = |message: String| Error::InvalidSpec {
        field: "invoke".into(),
        message,
    };
    let (name, args) = split(call).map_err(invalid)?;
    let missing = || {
        let mut names = export_names(program);
        names.sort();
        invalid(format!(
            "`{}` exports no function `{name}`; it exports: {}",
            program.path().display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ))
    };
    match &program.inner.kind {
        ProgramKind::Module { pre, .. } => {
            let Some(ExternType::Func(ty)) = pre.module().get_export(name) else {
                return Err(missing());
            };
            let types: Vec<wasmtime::ValType> = ty.params().collect();
            let results: Vec<wasmtime::ValType> = ty.results().collect();
            if !types.iter().chain(&results).all(wave_writable_type) {
                return Err(invalid(not_carried(name)));
            }
            params::<wasmtime::Val>(args, types.iter()).map_err(invalid)?;
        }
        ProgramKind::Component { .. } => {
            let ty = component_func(program, name).ok_or_else(missing)?;
            let types: Vec<component::Type> = ty.params().map(|(_, t)| t).collect();
            let results: Vec<component::Type> = ty.results().collect();
            if !types.iter().chain(&results).all(wave_writable_type) {
                return Err(invalid(not_carried(name)));
            }
            params::<component::Val>(args, types.iter()).map_err(invalid)?;
        }
        ProgramKind::Shared { .. } => {
            return Err(invalid(format!(
                "`{}` runs only in a shared memory group, which calls no export by name",
                program.path().display()
            )));
        }
    }
    Ok(())
}

/// Why `name` cannot be called by name.
fn not_carried(name: &str) -> String {
    format!(
        "`{name}` takes or returns a value that cannot be written as WAVE text (a reference, \
         resource, stream, future or map), so it cannot be called by name"
    )
}

/// A call ready to run in an instance: the function and its arguments.
pub(crate) enum Invocation {
    Core {
        func: wasmtime::Func,
        params: Vec<wasmtime::Val>,
    },
    Component {
        func: component::Func,
        params: Vec<component::Val>,
    },
}

impl Invocation {
    /// The call `call` in a module instance.
    pub(crate) fn core(
        store: &mut Store<TaskState>,
        instance: &wasmtime::Instance,
        call: &str,
    ) -> wasmtime::Result<Invocation> {
        let (name, args) = split(call).map_err(wasmtime::Error::msg)?;
        let func = instance
            .get_func(&mut *store, name)
            .ok_or_else(|| wasmtime::format_err!("no function export `{name}`"))?;
        let types: Vec<wasmtime::ValType> = func.ty(&*store).params().collect();
        let params = params::<wasmtime::Val>(args, types.iter()).map_err(wasmtime::Error::msg)?;
        Ok(Invocation::Core { func, params })
    }

    /// The call `call` in a component instance.
    pub(crate) fn component(
        store: &mut Store<TaskState>,
        instance: &component::Instance,
        call: &str,
    ) -> wasmtime::Result<Invocation> {
        let (name, args) = split(call).map_err(wasmtime::Error::msg)?;
        let index = match name.rsplit_once('#') {
            Some((outer, inner)) => {
                let outer = instance.get_export_index(&mut *store, None, outer);
                outer.and_then(|o| instance.get_export_index(&mut *store, Some(&o), inner))
            }
            None => instance.get_export_index(&mut *store, None, name),
        };
        let func = index
            .and_then(|index| instance.get_func(&mut *store, index))
            .ok_or_else(|| wasmtime::format_err!("no function export `{name}`"))?;
        let types: Vec<component::Type> = func.ty(&*store).params().map(|(_, t)| t).collect();
        let params = params::<component::Val>(args, types.iter()).map_err(wasmtime::Error::msg)?;
        Ok(Invocation::Component { func, params })
    }

    /// Runs the call; its results in WAVE, one per line.
    pub(crate) async fn call(&self, store: &mut Store<TaskState>) -> wasmtime::Result<Vec<u8>> {
        let texts = match self {
            Invocation::Core { func, params } => {
                let mut results = vec![wasmtime::Val::I32(0); func.ty(&*store).results().len()];
                func.call_async(store.as_context_mut(), params, &mut results)
                    .await?;
                results
                    .iter()
                    .map(wasm_wave::to_string)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Invocation::Component { func, params } => {
                let mut results =
                    vec![component::Val::Bool(false); func.ty(&*store).results().len()];
                func.call_async(store.as_context_mut(), params, &mut results)
                    .await?;
                results
                    .iter()
                    .map(component::Val::to_wave)
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let mut out = texts.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        Ok(out.into_bytes())
    }
}

/// The results of a call (its returned output) as component values, typed
/// by the function `name` of `program`.
pub(crate) fn component_results(
    program: &Program,
    name: &str,
    output: &[u8],
) -> Result<Vec<component::Val>, String> {
    let ty = component_func(program, name).ok_or_else(|| format!("no function `{name}`"))?;
    let types: Vec<component::Type> = ty.results().collect();
    crate::host_fn::typed_lines(output, &types, |ty, line| {
        component::Val::from_wave(ty, line).map_err(|e| e.to_string())
    })
}

/// As [`component_results`], for a module's function.
pub(crate) fn core_results(
    program: &Program,
    name: &str,
    output: &[u8],
) -> Result<Vec<wasmtime::Val>, String> {
    let ProgramKind::Module { pre, .. } = &program.inner.kind else {
        return Err("not a module".into());
    };
    let Some(ExternType::Func(ty)) = pre.module().get_export(name) else {
        return Err(format!("no function `{name}`"));
    };
    let types: Vec<wasmtime::ValType> = ty.results().collect();
    crate::host_fn::typed_lines(output, &types, |ty, line| {
        wasm_wave::from_str::<wasmtime::Val>(ty, line).map_err(|e| e.to_string())
    })
}

/// Whether a value can be written as WAVE, whichever kind it is.
fn writable<V: WasmValue + 'static>(value: &V) -> bool {
    use wasmtime::component::wasm_wave::wasm::WasmTypeKind as Kind;
    // Component values are walked in full; a core value is a number (a
    // reference's kind is `Unsupported`).
    let any: &dyn std::any::Any = value;
    match any.downcast_ref::<component::Val>() {
        Some(value) => crate::host_fn::wave_writable_value(value),
        None => !matches!(value.kind(), Kind::Unsupported),
    }
}

/// The call text for `name` with `args` (each printed in WAVE).
pub(crate) fn call_text<V: WasmValue + 'static>(name: &str, args: &[V]) -> Result<String, String> {
    let mut texts = Vec::with_capacity(args.len());
    for arg in args {
        if !writable(arg) {
            return Err(format!(
                "an argument of `{name}` cannot be written as WAVE text (a reference, resource, \
                 stream, future or map)"
            ));
        }
        texts.push(wasm_wave::to_string(arg).map_err(|e| e.to_string())?);
    }
    Ok(format!("{name}({})", texts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_call_splits_at_its_first_parenthesis() {
        assert_eq!(split(" add(1, 2) "), Ok(("add", "(1, 2)")));
        assert_eq!(split("isola_run()"), Ok(("isola_run", "()")));
        assert!(split("add").is_err());
        assert!(split("(1)").is_err());
    }
}
