//! The change operations the CLI performs on a configuration. Each checks what it can and
//! leaves the configuration unchanged when it fails; the agent validates the result whole
//! before publishing it.

use std::net::IpAddr;

use lbx_common::{MAX_BACKENDS, MAX_VIPS};

use super::validate::{
    check_address, check_backend, check_own_table_size, check_table_fits, check_weight,
};
use super::{Adaptive, BackendConfig, Config, ConfigError, HealthCheck, VipConfig, VipId};

impl Config {
    fn vip_mut(&mut self, id: VipId) -> Result<&mut VipConfig, ConfigError> {
        self.vips
            .iter_mut()
            .find(|v| v.id() == id)
            .ok_or(ConfigError::UnknownVip { vip: id })
    }

    fn backend_mut(
        &mut self,
        id: VipId,
        backend: IpAddr,
    ) -> Result<&mut BackendConfig, ConfigError> {
        self.vip_mut(id)?
            .backends
            .iter_mut()
            .find(|b| b.address == backend)
            .ok_or(ConfigError::UnknownBackend { vip: id, backend })
    }

    /// Adds a VIP without backends.
    pub fn add_vip(&mut self, id: VipId) -> Result<(), ConfigError> {
        check_address(id.address, "a VIP")?;
        if self.vip(id).is_some() {
            return Err(ConfigError::DuplicateVip { vip: id });
        }
        if self.vips.len() >= MAX_VIPS as usize {
            return Err(ConfigError::TooManyVips {
                count: self.vips.len() + 1,
                max: MAX_VIPS,
            });
        }
        self.vips.push(VipConfig {
            address: id.address,
            port: id.port,
            protocol: id.protocol,
            table_size: None,
            health: None,
            adaptive: None,
            backends: Vec::new(),
        });
        Ok(())
    }

    /// Gives a VIP its own Maglev table size (none: the configuration's), checked as the
    /// whole configuration's validation checks it.
    pub fn set_vip_table_size(&mut self, id: VipId, size: Option<u32>) -> Result<(), ConfigError> {
        let default = self.table_size;
        let vip = self.vip_mut(id)?;
        if let Some(own) = size {
            check_own_table_size(id, own)?;
        }
        check_table_fits(id, size, default, vip.backends.len())?;
        vip.table_size = size;
        Ok(())
    }

    /// Removes a VIP together with its backends, and returns it.
    pub fn del_vip(&mut self, id: VipId) -> Result<VipConfig, ConfigError> {
        let i = self
            .vips
            .iter()
            .position(|v| v.id() == id)
            .ok_or(ConfigError::UnknownVip { vip: id })?;
        Ok(self.vips.remove(i))
    }

    pub fn add_backend(&mut self, id: VipId, backend: BackendConfig) -> Result<(), ConfigError> {
        let total = self.backend_count();
        let default_size = self.table_size;
        let vip = self.vip_mut(id)?;
        check_backend(id, &backend)?;
        if vip.backend(backend.address).is_some() {
            return Err(ConfigError::BackendExists {
                vip: id,
                backend: backend.address,
            });
        }
        check_table_fits(id, vip.table_size, default_size, vip.backends.len() + 1)?;
        if total >= MAX_BACKENDS as usize {
            return Err(ConfigError::TooManyBackends {
                count: total + 1,
                max: MAX_BACKENDS,
            });
        }
        vip.backends.push(backend);
        Ok(())
    }

    /// Removes a backend from a VIP, and returns it.
    pub fn del_backend(
        &mut self,
        id: VipId,
        backend: IpAddr,
    ) -> Result<BackendConfig, ConfigError> {
        let vip = self.vip_mut(id)?;
        let i = vip
            .backends
            .iter()
            .position(|b| b.address == backend)
            .ok_or(ConfigError::UnknownBackend { vip: id, backend })?;
        Ok(vip.backends.remove(i))
    }

    pub fn set_weight(
        &mut self,
        id: VipId,
        backend: IpAddr,
        weight: u32,
    ) -> Result<(), ConfigError> {
        let b = self.backend_mut(id, backend)?;
        check_weight(id, backend, weight)?;
        b.weight = weight;
        Ok(())
    }

    /// Turns adaptive weights on (with these limits) or off for a VIP.
    pub fn set_adaptive(
        &mut self,
        id: VipId,
        adaptive: Option<Adaptive>,
    ) -> Result<(), ConfigError> {
        let vip = self.vip_mut(id)?;
        if let Some(a) = &adaptive {
            a.validate(id, vip.health.as_ref())?;
        }
        vip.adaptive = adaptive;
        Ok(())
    }

    /// Sets (or with `None` removes) the health check of a VIP's backends.
    pub fn set_health(
        &mut self,
        id: VipId,
        health: Option<HealthCheck>,
    ) -> Result<(), ConfigError> {
        if let Some(h) = &health {
            h.validate(id)?;
        }
        let vip = self.vip_mut(id)?;
        if health.is_none() && vip.adaptive.is_some() {
            return Err(ConfigError::BadAdaptive {
                vip: id,
                reason: "adaptive weights need the health check: turn them off first \
                         (`lbx vip adaptive VIP --off`)"
                    .into(),
            });
        }
        vip.health = health;
        Ok(())
    }

    pub fn set_drain(
        &mut self,
        id: VipId,
        backend: IpAddr,
        drain: bool,
    ) -> Result<(), ConfigError> {
        self.backend_mut(id, backend)?.drain = drain;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;

    #[test]
    fn edits() {
        let mut c = sample();
        let v4 = vid("10.0.0.100:80/tcp");
        let b = ip("10.0.0.12");
        c.set_weight(v4, b, 65535).unwrap();
        c.set_drain(v4, b, true).unwrap();
        assert_eq!(
            c.vip(v4).unwrap().backend(b).unwrap(),
            &BackendConfig {
                address: b,
                weight: 65535,
                mac: None,
                drain: true
            }
        );
        let removed = c.del_backend(v4, b).unwrap();
        assert_eq!(removed.address, b);
        assert!(c.vip(v4).unwrap().backend(b).is_none());
        let gone = c.del_vip(v4).unwrap();
        assert_eq!(gone.backends.len(), 1, "its backends go with it");
        assert!(c.vip(v4).is_none());
        assert_eq!(c.backend_count(), 1);
        c.validate().unwrap();
    }

    #[test]
    fn failed_edits_leave_config_unchanged() {
        let v4 = vid("10.0.0.100:80/tcp");
        let nope = vid("10.0.0.200:80/tcp");
        let known = ip("10.0.0.11");
        let unknown = ip("10.0.0.99");
        let edits: Vec<(Edit, Vec<&str>)> = vec![
            (
                Box::new(move |c| c.del_vip(nope).map(drop)),
                vec!["10.0.0.200:80/tcp"],
            ),
            (
                Box::new(move |c| c.add_backend(nope, BackendConfig::new(unknown))),
                vec!["10.0.0.200:80/tcp"],
            ),
            (
                Box::new(move |c| c.del_backend(nope, known).map(drop)),
                vec!["10.0.0.200:80/tcp"],
            ),
            (
                Box::new(move |c| c.del_backend(v4, unknown).map(drop)),
                vec!["10.0.0.99", "10.0.0.100:80/tcp"],
            ),
            (
                Box::new(move |c| c.set_weight(v4, unknown, 5)),
                vec!["10.0.0.99"],
            ),
            (
                Box::new(move |c| c.set_weight(v4, known, 0)),
                vec!["weight 0", "10.0.0.11"],
            ),
            (
                Box::new(move |c| c.set_weight(v4, known, 65536)),
                vec!["65536"],
            ),
            (
                Box::new(move |c| c.set_weight(nope, known, 5)),
                vec!["10.0.0.200:80/tcp"],
            ),
            (
                Box::new(move |c| c.set_drain(v4, unknown, true)),
                vec!["10.0.0.99"],
            ),
            (
                Box::new(move |c| c.set_drain(nope, known, true)),
                vec!["10.0.0.200:80/tcp"],
            ),
        ];
        for (edit, names) in edits {
            let mut c = sample();
            let before = c.clone();
            let e = assert_names(edit(&mut c), &names);
            assert!(
                matches!(
                    e,
                    ConfigError::UnknownVip { .. }
                        | ConfigError::UnknownBackend { .. }
                        | ConfigError::WeightOutOfRange { .. }
                ),
                "{e:?}"
            );
            assert_eq!(c, before);
        }
    }
}
