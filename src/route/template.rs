//! Route-path templates and service ids, as Surging builds them from an interface and its methods.
//!
//! * `Api/{Service}` + `IRoteMangeService` + `GetServiceById` -> `api/rotemange/getservicebyid`
//! * `api/{Service}/{Method}` + `IUserService` + `GetUserName` + route `{id}` -> `api/user/getusername/{id}`

use crate::error::{Error, Result};

/// A route-path template such as `api/{Service}/{Method}`.
///
/// `{Service}` becomes the interface name without its leading `I` and trailing `Service`,
/// `{Method}` the method name; any other `{x}` segment is a parameter, kept as `{x}`. When the
/// template has no `{Method}`, the method name is placed before the first parameter or at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    segments: Vec<String>,
}

impl RouteTemplate {
    /// Parses a template; it needs at least one segment and balanced braces.
    pub fn parse(template: &str) -> Result<Self> {
        let segments: Vec<String> = template
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if segments.is_empty() {
            return Err(Error::invalid_input(format!(
                "route template {template:?} is empty"
            )));
        }
        for segment in &segments {
            let opens = segment.matches('{').count();
            let closes = segment.matches('}').count();
            let is_param = segment.starts_with('{') && segment.ends_with('}') && opens == 1;
            if opens != closes || (opens > 0 && !is_param) || segment == "{}" {
                return Err(Error::invalid_input(format!(
                    "route template {template:?} has a malformed segment {segment:?}"
                )));
            }
        }
        Ok(RouteTemplate { segments })
    }

    /// Builds the route path for one method of `service_interface`.
    ///
    /// `service_interface` may be a full name (`Surging.IModuleServices.Common.IUserService`);
    /// `method_route` is the method's own template (such as `{id}`), appended at the end.
    pub fn expand(
        &self,
        service_interface: &str,
        method: &str,
        method_route: Option<&str>,
    ) -> Result<String> {
        if method.trim().is_empty() {
            return Err(Error::invalid_input("method name is empty"));
        }
        let service = service_short_name(service_interface)?;
        let mut parts: Vec<String> = Vec::with_capacity(self.segments.len() + 2);
        let mut method_placed = false;
        for segment in &self.segments {
            match parameter_name(segment) {
                None => parts.push(segment.clone()),
                Some(name) if name.eq_ignore_ascii_case("Service") => parts.push(service.clone()),
                Some(name) if name.eq_ignore_ascii_case("Method") => {
                    parts.push(method.to_owned());
                    method_placed = true;
                }
                Some(_) => {
                    if !method_placed {
                        parts.push(method.to_owned());
                        method_placed = true;
                    }
                    parts.push(segment.clone());
                }
            }
        }
        if !method_placed {
            parts.push(method.to_owned());
        }
        if let Some(route) = method_route {
            parts.extend(
                route
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        Ok(parts.join("/").to_lowercase())
    }
}

/// The `{x}` name of a parameter segment, or `None` for a literal segment.
pub fn parameter_name(segment: &str) -> Option<&str> {
    segment.strip_prefix('{')?.strip_suffix('}')
}

/// `Surging.X.IUserService` -> `User`: last dotted part, without a leading `I` and trailing `Service`.
pub fn service_short_name(service_interface: &str) -> Result<String> {
    let last = service_interface
        .rsplit('.')
        .next()
        .unwrap_or(service_interface);
    let mut name = last;
    let mut chars = name.chars();
    if let (Some('I'), Some(next)) = (chars.next(), chars.next()) {
        if next.is_ascii_uppercase() {
            name = &name[1..];
        }
    }
    if let Some(stripped) = name.strip_suffix("Service") {
        if !stripped.is_empty() {
            name = stripped;
        }
    }
    if name.is_empty() {
        return Err(Error::invalid_input(format!(
            "service interface name {service_interface:?} is empty"
        )));
    }
    Ok(name.to_owned())
}

/// The Surging service id of a method: `Interface.FullName.Method`, plus `_` and the parameter
/// names joined by `_` when it has parameters.
///
/// `service_id("Surging.IModuleServices.Common.IUserService", "GetUserName", &["id"])`
/// is `Surging.IModuleServices.Common.IUserService.GetUserName_id`.
pub fn service_id(service_interface: &str, method: &str, parameters: &[&str]) -> String {
    let mut id = format!("{service_interface}.{method}");
    if !parameters.is_empty() {
        id.push('_');
        id.push_str(&parameters.join("_"));
    }
    id
}
