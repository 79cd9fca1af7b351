//! Holding the VIP: on an interface (netlink + gratuitous ARP) or by binding listeners.
//!
//! Interface mode talks to the kernel directly (there is no `ip` binary in a scratch image):
//! rtnetlink adds and removes the address; gratuitous ARP goes out on a raw packet socket so
//! neighbours repoint the VIP to our MAC at once instead of waiting for their ARP entry to
//! expire.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("ha.vip_mode = \"interface\" needs CAP_NET_ADMIN and CAP_NET_RAW (run as root, or grant them: docker run --cap-add NET_ADMIN --cap-add NET_RAW)")]
    Capabilities,
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("no interface holds {0}; set [ha] interface")]
    NoInterface(IpAddr),
    #[error("interface {0:?} not found")]
    UnknownInterface(String),
}

/// Whether this process has CAP_NET_ADMIN (12) and CAP_NET_RAW (13) in its effective set.
pub fn has_net_caps() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0 && caps & (1 << 13) != 0)
}

/// The VIP on an interface.
pub struct InterfaceVip {
    handle: rtnetlink::Handle,
    index: u32,
    mac: [u8; 6],
    vip: IpAddr,
    prefix: u8,
    /// The gratuitous ARPs still to send for the latest acquire. They stop when the VIP is
    /// released or handed over: a late announcement would point neighbours back at this node
    /// after the peer took the VIP, and the peer's connections would be reset here.
    announcer: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl InterfaceVip {
    /// Finds the interface (by name, or the one holding `own`) and its MAC. Must run inside
    /// the runtime that will use it (the netlink connection task is spawned there).
    pub async fn open(
        vip: IpAddr,
        prefix: u8,
        own: IpAddr,
        interface: Option<&str>,
    ) -> Result<InterfaceVip, VipError> {
        if !has_net_caps() {
            return Err(VipError::Capabilities);
        }
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| VipError::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        let index = match interface {
            Some(name) => {
                let link = handle
                    .link()
                    .get()
                    .match_name(name.to_string())
                    .execute()
                    .try_next()
                    .await
                    .map_err(|_| VipError::UnknownInterface(name.to_string()))?
                    .ok_or_else(|| VipError::UnknownInterface(name.to_string()))?;
                link.header.index
            }
            None => {
                let mut addresses = handle.address().get().execute();
                let mut found = None;
                while let Some(msg) = addresses
                    .try_next()
                    .await
                    .map_err(|e| VipError::Netlink(e.to_string()))?
                {
                    let holds = msg.attributes.iter().any(|a| {
                        matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == own)
                    });
                    if holds {
                        found = Some(msg.header.index);
                        break;
                    }
                }
                found.ok_or(VipError::NoInterface(own))?
            }
        };
        let link = handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(|e| VipError::Netlink(e.to_string()))?
            .ok_or_else(|| VipError::UnknownInterface(index.to_string()))?;
        let mut mac = [0u8; 6];
        let mut name = None;
        for attr in &link.attributes {
            match attr {
                LinkAttribute::Address(bytes) if bytes.len() == 6 => mac.copy_from_slice(bytes),
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                _ => {}
            }
        }
        if let Some(name) = name {
            announce_from_own_address(&name);
        }
        Ok(InterfaceVip {
            handle,
            index,
            mac,
            vip,
            prefix,
            announcer: std::sync::Mutex::new(None),
        })
    }

    /// Adds the VIP (an address already present is fine) and announces it.
    pub async fn acquire(&self) -> Result<(), VipError> {
        if !self.present().await? {
            self.handle
                .address()
                .add(self.index, self.vip, self.prefix)
                .execute()
                .await
                .map_err(|e| VipError::Netlink(e.to_string()))?;
        }
        if let IpAddr::V4(v4) = self.vip {
            let (index, mac) = (self.index, self.mac);
            // A few announcements: the first may race the address becoming usable, and a
            // lost frame should not leave neighbours pointing at the dead master.
            let task = tokio::spawn(async move {
                for delay in [0u64, 50, 150, 500] {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    if let Err(e) = gratuitous_arp(index, mac, v4) {
                        tracing::warn!(error = %e, "gratuitous ARP failed");
                    }
                }
            });
            if let Some(old) = self.announcer().replace(task.abort_handle()) {
                old.abort();
            }
        }
        Ok(())
    }

    /// Stops the announcements of the latest acquire (the VIP is being handed over).
    pub fn stop_announcing(&self) {
        if let Some(task) = self.announcer().take() {
            task.abort();
        }
    }

    fn announcer(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::AbortHandle>> {
        self.announcer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops announcing and removes the VIP if present.
    pub async fn release(&self) -> Result<(), VipError> {
        self.stop_announcing();
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        while let Some(msg) = addresses
            .try_next()
            .await
            .map_err(|e| VipError::Netlink(e.to_string()))?
        {
            let is_vip = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == self.vip)
            });
            if is_vip {
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(|e| VipError::Netlink(e.to_string()))?;
            }
        }
        Ok(())
    }

    async fn present(&self) -> Result<bool, VipError> {
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        while let Some(msg) = addresses
            .try_next()
            .await
            .map_err(|e| VipError::Netlink(e.to_string()))?
        {
            if msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == self.vip)
            }) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Makes the kernel name the interface's own address, never the VIP, as the sender of the ARP
/// requests it sends (`arp_announce` = 2): during a handover both gateways hold the VIP for a
/// moment, and a request naming it from the one letting go would point neighbours back at it.
/// Best effort: where /proc/sys is read-only (a container), the runtime sets it (devctl passes
/// `--sysctl net.ipv4.conf.all.arp_announce=2`), and a warning says so when nobody did.
fn announce_from_own_address(interface: &str) {
    let read = |scope: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{scope}/arp_announce"))
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
    };
    // The kernel uses the larger of `all` and the interface's value.
    if read("all").max(read(interface)).is_some_and(|v| v >= 2) {
        return;
    }
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/arp_announce");
    match std::fs::write(&path, "2") {
        Ok(()) => {
            tracing::info!(%interface, "arp_announce set to 2: ARP requests name the interface's own address, not the VIP")
        }
        Err(e) => tracing::warn!(
            %interface,
            error = %e,
            "could not set arp_announce = 2; set net.ipv4.conf.{interface}.arp_announce=2 (docker run --sysctl net.ipv4.conf.all.arp_announce=2), or a planned handover may briefly send clients back to the node letting go"
        ),
    }
}

/// The ARP payload of a gratuitous ARP request for `ip` from `mac` (RFC 5227 announcement).
pub fn garp_payload(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// Broadcasts one gratuitous ARP on interface `index`.
fn gratuitous_arp(index: u32, mac: [u8; 6], ip: Ipv4Addr) -> std::io::Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let payload = garp_payload(mac, ip);
    // SAFETY: plain socket calls with a correctly sized, zero-initialised sockaddr_ll; the fd
    // is closed on every path.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let sent = libc::sendto(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let result = if sent < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(fd);
        result
    }
}

/// Bind mode: the VIP is "held" by binding the listeners that name it; the gateway watches
/// this flag and binds or closes them.
#[derive(Clone)]
pub struct BindVip {
    held: watch::Sender<bool>,
}

impl BindVip {
    pub fn new() -> (BindVip, watch::Receiver<bool>) {
        let (held, rx) = watch::channel(false);
        (BindVip { held }, rx)
    }

    pub fn set(&self, held: bool) {
        self.held.send_replace(held);
    }
}

/// Either way of holding the VIP.
pub enum VipHolder {
    Interface(InterfaceVip),
    Bind(BindVip),
}

impl VipHolder {
    pub async fn acquire(&self) -> Result<(), VipError> {
        match self {
            VipHolder::Interface(v) => v.acquire().await,
            VipHolder::Bind(b) => {
                b.set(true);
                Ok(())
            }
        }
    }

    /// Stops announcing the VIP, which is still held (a handover is under way).
    pub fn stop_announcing(&self) {
        if let VipHolder::Interface(v) = self {
            v.stop_announcing();
        }
    }

    pub async fn release(&self) -> Result<(), VipError> {
        match self {
            VipHolder::Interface(v) => v.release().await,
            VipHolder::Bind(b) => {
                b.set(false);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_layout() {
        let p = garp_payload([2, 0, 0, 0, 0, 1], Ipv4Addr::new(172, 28, 1, 100));
        assert_eq!(&p[0..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&p[14..18], &[172, 28, 1, 100]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[172, 28, 1, 100]);
    }
}
