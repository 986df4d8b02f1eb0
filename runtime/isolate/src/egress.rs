//! Where tenants' outbound `fetch` may go: a deny list of address ranges in the isolate's
//! permissions, which deno_fetch checks against the URL's host and against every address a
//! host name resolves to, on every redirect hop.

use std::sync::Arc;

use deno_permissions::{
    Host, NetDescriptor, Permissions, PermissionsContainer, PermissionsOptions,
    RuntimePermissionDescriptorParser,
};

/// Where tenants' outbound `fetch` may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// Public addresses only: loopback, private, link-local, shared, multicast and
    /// cloud-metadata addresses are refused, checked on the resolved address of every hop.
    Public,
    /// Public addresses and loopback (for `outpost dev`, to reach local services).
    PublicAndLoopback,
    /// Anywhere.
    Any,
}

/// Address ranges tenants may not reach unless the node allows it: everything that is not a
/// public unicast address. Loopback comes first; [`Egress::PublicAndLoopback`] skips it.
const LOOPBACK_RANGES: &[&str] = &["127.0.0.0/8", "::1/128"];
const NON_PUBLIC_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "168.63.129.16/32",
    "::/128",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "2002::/16",
];

/// Network access for `fetch` within `egress`, and nothing else: no file, environment,
/// process or FFI access. `fetch("file:...")` is refused because reads are not allowed.
pub fn tenant_permissions(egress: Egress) -> Result<PermissionsContainer, String> {
    let parser = Arc::new(RuntimePermissionDescriptorParser::new(
        sys_traits::impls::RealSys,
    ));
    let options = PermissionsOptions {
        allow_net: Some(vec![]),
        prompt: false,
        ..Default::default()
    };
    let mut permissions =
        Permissions::from_options(parser.as_ref(), &options).map_err(|e| e.to_string())?;
    let mut denied: Vec<&str> = Vec::new();
    if egress != Egress::Any {
        denied.extend(NON_PUBLIC_RANGES);
    }
    if egress == Egress::Public {
        denied.extend(LOOPBACK_RANGES);
    }
    if !denied.is_empty() {
        let deny = denied
            .iter()
            .map(|range| {
                range
                    .parse::<ipnet::IpNet>()
                    .map(|net| NetDescriptor(Host::IpSubnet(net), None))
                    .map_err(|e| format!("{range}: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        permissions.net = Permissions::new_unary(Some(vec![]), Some(deny), false);
    }
    Ok(PermissionsContainer::new(parser, permissions))
}
