//! XDSM (DMAPI) for Tidepool: types, sessions, events and the cluster event protocol.
