//! Tests of the route model: the Surging wire codec, route-path templates, service ids and the
//! registry key encoding.

use std::net::Ipv6Addr;

use serde_json::{json, Value};
use wayfinder::route::{
    decode_route, encode_route, encode_route_for_surging, encode_route_value, instance_id,
    parse_instance_id, service_id, service_short_name, validate_key, validate_service_id,
    KeyLayout, RouteTemplate, DEFAULT_PREFIX, MAX_VALUE_BYTES,
};
use wayfinder::{Address, ErrorKind, ServiceDescriptor, ServiceRoute};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const CURRENT_FORM: &str = r#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"192.168.1.10\",\"Port\":98,\"WsPort\":0,\"MqttPort\":0}"}],"ServiceDescriptor":{"Id":"Surging.IModuleServices.Common.IUserService.Save_requestData","Token":"2e12df88b96c4ea6befa7bc3a3e4e406","RoutePath":"api/user/save","Metadatas":{"HttpMethod":"POST,PUT","EnableAuthorization":true,"AuthType":"JWT"}}}"#;

const OLDER_FORM: &str = r#"{"AddressDescriptors":[{"Type":"Surging.Core.CPlatform.Address.IpAddressModel","Value":"{\"Ip\":\"127.0.0.1\",\"Port\":98,\"Token\":\"88904f103a3740529e960d9d230ce852\",\"DisableAuth\":false}"}],"ServiceDescriptor":{"Id":"Surging.IModuleServices.Common.IRoteMangeService.GetServiceById_serviceId","RoutePath":"api/rotemange/getservicebyid","Metadatas":{"EnableAuthorization":false}}}"#;

/// Parses the wire JSON and replaces each address descriptor's `Value` string with the JSON value
/// it holds, so two encodings compare equal whatever the key order inside the inner strings.
fn normalize(mut route: Value) -> Value {
    if let Some(list) = route
        .get_mut("AddressDescriptors")
        .and_then(Value::as_array_mut)
    {
        for entry in list {
            let inner = entry
                .get("Value")
                .and_then(Value::as_str)
                .map(|text| serde_json::from_str::<Value>(text).expect("inner Value is JSON"));
            if let Some(inner) = inner {
                entry["Value"] = inner;
            }
        }
    }
    route
}

fn wire_value(bytes: &[u8]) -> Value {
    normalize(serde_json::from_slice(bytes).expect("wire JSON parses"))
}

/// A route JSON document with one address and a metadata string of `pad` ASCII letters.
fn padded_route_json(pad: usize) -> Vec<u8> {
    let doc = json!({
        "AddressDescriptors": [{"Value": "{\"Ip\":\"10.0.0.1\",\"Port\":80}"}],
        "ServiceDescriptor": {
            "Id": "Svc.Pad",
            "RoutePath": "api/pad",
            "Metadatas": {"Pad": "a".repeat(pad)}
        }
    });
    serde_json::to_vec(&doc).unwrap()
}

fn route_with_address_values(values: &[&str]) -> Vec<u8> {
    let descriptors: Vec<Value> = values.iter().map(|v| json!({ "Value": v })).collect();
    serde_json::to_vec(&json!({
        "AddressDescriptors": descriptors,
        "ServiceDescriptor": {"Id": "Svc.Method", "RoutePath": "api/svc/method"}
    }))
    .unwrap()
}

/// The key rule `^[a-zA-Z0-9,_./\-?&=]+$`, plus no `//`, no `..` and no leading `/`.
fn is_clean_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ",_./-?&=".contains(c))
        && !key.contains("//")
        && !key.contains("..")
        && !key.starts_with('/')
}

// ---------------------------------------------------------------------------------------------
// 1. Wire codec
// ---------------------------------------------------------------------------------------------

#[test]
fn current_surging_form_decodes_and_reencodes_to_the_same_json() {
    let route = decode_route(CURRENT_FORM.as_bytes()).unwrap();

    assert_eq!(
        route.id(),
        "Surging.IModuleServices.Common.IUserService.Save_requestData"
    );
    assert_eq!(route.route_path(), "api/user/save");
    assert_eq!(
        route.descriptor.token.as_deref(),
        Some("2e12df88b96c4ea6befa7bc3a3e4e406")
    );
    assert_eq!(
        Value::Object((*route.descriptor.metadata).clone()),
        json!({"HttpMethod": "POST,PUT", "EnableAuthorization": true, "AuthType": "JWT"})
    );
    assert_eq!(route.addresses.len(), 1);
    let address = &route.addresses[0];
    assert_eq!(address.ip, "192.168.1.10");
    assert_eq!(address.port, 98);
    assert_eq!(address.ws_port, Some(0));
    assert_eq!(address.mqtt_port, Some(0));

    let expected = wire_value(CURRENT_FORM.as_bytes());
    let bytes = encode_route(&route).unwrap();
    assert_eq!(wire_value(&bytes), expected);

    // The address is written as a JSON string under `Value`, as Surging writes it.
    let raw: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(raw["AddressDescriptors"][0]["Value"].is_string());

    let value = encode_route_value(&route).unwrap();
    assert!(value["AddressDescriptors"][0]["Value"].is_string());
    assert_eq!(normalize(value), expected);
}

#[test]
fn older_surging_form_decodes_and_lifts_address_token() {
    let route = decode_route(OLDER_FORM.as_bytes()).unwrap();

    assert_eq!(
        route.id(),
        "Surging.IModuleServices.Common.IRoteMangeService.GetServiceById_serviceId"
    );
    assert_eq!(route.route_path(), "api/rotemange/getservicebyid");
    assert_eq!(
        Value::Object((*route.descriptor.metadata).clone()),
        json!({"EnableAuthorization": false})
    );
    assert_eq!(route.addresses.len(), 1);
    assert_eq!(route.addresses[0].ip, "127.0.0.1");
    assert_eq!(route.addresses[0].port, 98);
    assert_eq!(route.addresses[0].to_string(), "127.0.0.1:98");
    assert_eq!(
        route.descriptor.token.as_deref(),
        Some("88904f103a3740529e960d9d230ce852")
    );
}

/// Values exactly as each age of Surging writes them: each is read, with its addresses, token,
/// metadata and (in seconds) timestamp.
#[test]
fn values_as_every_surging_version_writes_them_are_read() {
    // Today's form with a weight: `Tp` in seconds beside `Wt`, 0-valued optional fields omitted.
    let current = r#"{"AddressDescriptors":[{"Value":"{\"Ip\":\"192.168.1.10\",\"Port\":98,\"WsPort\":96,\"MqttPort\":97,\"HttpPort\":280,\"Wt\":3,\"Tp\":1732000000}"}],"ServiceDescriptor":{"Id":"Surging.IModuleServices.Common.IUserService.GetUser_id","Token":"True","RoutePath":"api/user/getuser","Metadatas":{"HttpMethod":"GET"}}}"#;
    let route = decode_route(current.as_bytes()).unwrap();
    let address = &route.addresses[0];
    assert_eq!(
        (address.port, address.ws_port, address.http_port),
        (98, Some(96), Some(280))
    );
    assert_eq!(
        (address.weight, address.timestamp),
        (Some(3), Some(1_732_000_000))
    );
    assert_eq!(route.descriptor.token.as_deref(), Some("True"));

    // A process with Surging's camelCase resolver: every name camelCase, metadata keys too.
    let camel = r#"{"addressDescriptors":[{"value":"{\"ip\":\"192.168.1.11\",\"port\":98,\"wsPort\":0,\"mqttPort\":0}"}],"serviceDescriptor":{"id":"Surging.IModuleServices.Common.IUserService.GetUser_id","token":null,"routePath":"api/user/getuser","metadatas":{"httpMethod":"GET"}}}"#;
    let route = decode_route(camel.as_bytes()).unwrap();
    assert_eq!(route.addresses[0].to_string(), "192.168.1.11:98");
    assert_eq!(route.route_path(), "api/user/getuser");
    assert_eq!(route.descriptor.token, None);
    assert_eq!(
        route.descriptor.metadata.get("httpMethod"),
        Some(&json!("GET"))
    );

    // Mid-2018: `Type` (assembly-qualified) still beside `Value`, nulls written out.
    let mid_2018 = r#"{"AddressDescriptors":[{"Type":"Surging.Core.CPlatform.Address.IpAddressModel, Surging.Core.CPlatform","Value":"{\"Ip\":\"127.0.0.1\",\"Port\":98,\"WanIp\":null,\"WsPort\":0,\"MqttPort\":null,\"HttpPort\":null,\"ProcessorTime\":0.0}"}],"ServiceDescriptor":{"Id":"Surging.IModuleServices.Common.IUserService.GetUser_id","Token":null,"RoutePath":"api/user/getuser","Metadatas":{"EnableAuthorization":false}}}"#;
    let route = decode_route(mid_2018.as_bytes()).unwrap();
    assert_eq!(route.addresses[0].to_string(), "127.0.0.1:98");
    assert_eq!(route.addresses[0].wan_ip, None);

    // 2017: `Type` required and the token inside each address.
    let route = decode_route(OLDER_FORM.as_bytes()).unwrap();
    assert_eq!(
        route.descriptor.token.as_deref(),
        Some("88904f103a3740529e960d9d230ce852")
    );

    // A route whose every address went, and one without metadata.
    let emptied = r#"{"AddressDescriptors":[],"ServiceDescriptor":{"Id":"Surging.IModuleServices.Common.IUserService.GetUser_id","RoutePath":"api/user/getuser","Metadatas":null}}"#;
    let route = decode_route(emptied.as_bytes()).unwrap();
    assert!(route.addresses.is_empty());
    assert!(route.descriptor.metadata.is_empty());
}

/// In the `surging` layout wayfinder writes the form every Surging reader takes: `Type` beside
/// each `Value`, the token inside each address too, `WsPort` and `MqttPort` always there.
#[test]
fn the_surging_layout_writes_what_every_surging_reader_takes() {
    let descriptor =
        ServiceDescriptor::new("Svc.IUserService.Get", "api/user/get").with_token("t0k");
    let mut address = Address::new("10.0.0.1", 98);
    address.weight = Some(2);
    address.timestamp = Some(1_732_000_000);
    let route = ServiceRoute::new(descriptor, vec![address]);
    let written: Value =
        serde_json::from_slice(&encode_route_for_surging(&route).unwrap()).unwrap();
    let entry = &written["AddressDescriptors"][0];
    assert_eq!(
        entry["Type"],
        "Surging.Core.CPlatform.Address.IpAddressModel"
    );
    let inner: Value = serde_json::from_str(entry["Value"].as_str().unwrap()).unwrap();
    assert_eq!(
        inner,
        json!({"Ip": "10.0.0.1", "Port": 98, "WsPort": 0, "MqttPort": 0, "Wt": 2, "Tp": 1_732_000_000i64, "Token": "t0k"})
    );
    assert_eq!(written["ServiceDescriptor"]["Token"], "t0k");
    let read = decode_route(&encode_route_for_surging(&route).unwrap()).unwrap();
    assert_eq!(read.descriptor, route.descriptor);
    assert_eq!(read.addresses[0].timestamp, Some(1_732_000_000));
}

#[test]
fn descriptor_token_wins_over_address_token() {
    let doc = json!({
        "AddressDescriptors": [{"Value": "{\"Ip\":\"127.0.0.1\",\"Port\":98,\"Token\":\"from-address\"}"}],
        "ServiceDescriptor": {"Id": "Svc.M", "Token": "from-descriptor", "RoutePath": "api/svc/m"}
    });
    let route = decode_route(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(route.descriptor.token.as_deref(), Some("from-descriptor"));
}

#[test]
fn leading_utf8_bom_is_accepted() {
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend_from_slice(CURRENT_FORM.as_bytes());
    let with_bom = decode_route(&bytes).unwrap();
    let without_bom = decode_route(CURRENT_FORM.as_bytes()).unwrap();
    assert_eq!(with_bom, without_bom);

    let mut old = vec![0xEF, 0xBB, 0xBF];
    old.extend_from_slice(OLDER_FORM.as_bytes());
    assert_eq!(
        decode_route(&old).unwrap().route_path(),
        "api/rotemange/getservicebyid"
    );
}

#[test]
fn unknown_fields_are_ignored_at_every_level() {
    let doc = json!({
        "Version": 3,
        "Extra": {"nested": [1, 2, 3]},
        "AddressDescriptors": [{
            "Type": "Surging.Core.CPlatform.Address.IpAddressModel",
            "Weight": 7,
            "Comment": "unknown in the address descriptor",
            "Value": "{\"Ip\":\"10.1.2.3\",\"Port\":4000,\"Zone\":\"eu\",\"Tags\":[\"a\"],\"DisableAuth\":true}"
        }],
        "ServiceDescriptor": {
            "Id": "Svc.Method_id",
            "RoutePath": "api/svc/method",
            "Metadatas": {"HttpMethod": "GET"},
            "Owner": "team-a",
            "Flags": [true, false],
            "Nested": {"deep": null}
        }
    });
    let route = decode_route(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(route.id(), "Svc.Method_id");
    assert_eq!(route.route_path(), "api/svc/method");
    assert_eq!(
        Value::Object((*route.descriptor.metadata).clone()),
        json!({"HttpMethod": "GET"})
    );
    assert_eq!(
        owned(&route.addresses),
        vec![Address::new("10.1.2.3", 4000)]
    );
}

#[test]
fn inline_object_address_value_is_accepted() {
    let doc = json!({
        "AddressDescriptors": [{"Value": {"Ip": "10.0.0.9", "Port": 8080, "Unknown": 1}}],
        "ServiceDescriptor": {"Id": "Svc.M", "RoutePath": "api/svc/m"}
    });
    let route = decode_route(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(
        owned(&route.addresses),
        vec![Address::new("10.0.0.9", 8080)]
    );
}

#[test]
fn address_with_port_zero_is_skipped() {
    let bytes = route_with_address_values(&[r#"{"Ip":"10.0.0.1","Port":0}"#]);
    let route = decode_route(&bytes).unwrap();
    assert_eq!(route.id(), "Svc.Method");
    assert!(route.addresses.is_empty(), "{:?}", route.addresses);
}

#[test]
fn address_with_port_70000_is_skipped() {
    let bytes = route_with_address_values(&[r#"{"Ip":"10.0.0.1","Port":70000}"#]);
    let route = decode_route(&bytes).unwrap();
    assert_eq!(route.id(), "Svc.Method");
    assert!(route.addresses.is_empty(), "{:?}", route.addresses);
}

#[test]
fn bad_addresses_are_skipped_and_good_ones_kept() {
    let bytes = route_with_address_values(&[
        r#"{"Ip":"10.0.0.1","Port":0}"#,
        r#"{"Ip":"10.0.0.2","Port":81}"#,
        r#"{"Ip":"10.0.0.3","Port":70000}"#,
        r#"{"Ip":"","Port":82}"#,
        r#"{"Port":83}"#,
        r#"{"Ip":"10.0.0.4","Port":-1}"#,
        r#"not json"#,
        r#"{"Ip":"10.0.0.5","Port":65535}"#,
    ]);
    let route = decode_route(&bytes).unwrap();
    assert_eq!(
        owned(&route.addresses),
        vec![
            Address::new("10.0.0.2", 81),
            Address::new("10.0.0.5", 65535)
        ]
    );
}

#[test]
fn empty_or_missing_id_is_malformed() {
    for descriptor in [
        json!({"Id": "", "RoutePath": "api/x"}),
        json!({"Id": "   ", "RoutePath": "api/x"}),
        json!({"Id": null, "RoutePath": "api/x"}),
        json!({"RoutePath": "api/x"}),
    ] {
        let doc = json!({"AddressDescriptors": [], "ServiceDescriptor": descriptor});
        let err = decode_route(&serde_json::to_vec(&doc).unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed, "{descriptor}: {err}");
    }
}

#[test]
fn encoding_a_route_with_an_empty_id_is_invalid_input() {
    let route = ServiceRoute::new(ServiceDescriptor::new("", "api/x"), vec![]);
    assert_eq!(
        encode_route(&route).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        encode_route_value(&route).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn encoding_an_address_with_port_zero_is_invalid_input() {
    let route = ServiceRoute::new(
        ServiceDescriptor::new("Svc.M", "api/svc/m"),
        vec![Address::new("10.0.0.1", 0)],
    );
    assert_eq!(
        encode_route(&route).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn decode_accepts_a_value_of_exactly_max_bytes() {
    let base = padded_route_json(0).len();
    let bytes = padded_route_json(MAX_VALUE_BYTES - base);
    assert_eq!(bytes.len(), MAX_VALUE_BYTES);
    let route = decode_route(&bytes).unwrap();
    assert_eq!(route.id(), "Svc.Pad");
}

#[test]
fn decode_rejects_a_value_over_max_bytes_as_invalid_input() {
    let base = padded_route_json(0).len();
    let bytes = padded_route_json(MAX_VALUE_BYTES - base + 1);
    assert_eq!(bytes.len(), MAX_VALUE_BYTES + 1);
    let err = decode_route(&bytes).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    // Oversize garbage is reported as oversize, not as malformed.
    let garbage = vec![b'x'; MAX_VALUE_BYTES + 1];
    assert_eq!(
        decode_route(&garbage).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn encode_accepts_exactly_max_bytes_and_rejects_one_more() {
    let route_with_pad = |pad: usize| {
        ServiceRoute::new(
            ServiceDescriptor::new("Svc.Pad", "api/pad").with_metadata("Pad", "a".repeat(pad)),
            vec![Address::new("10.0.0.1", 80)],
        )
    };
    let base = encode_route(&route_with_pad(0)).unwrap().len();

    let at_limit = encode_route(&route_with_pad(MAX_VALUE_BYTES - base)).unwrap();
    assert_eq!(at_limit.len(), MAX_VALUE_BYTES);

    let err = encode_route(&route_with_pad(MAX_VALUE_BYTES - base + 1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn malformed_json_is_malformed() {
    for input in [
        &b"{"[..],
        b"not json",
        b"",
        b"[]",
        b"{\"AddressDescriptors\":[]}",
        b"{\"ServiceDescriptor\":{\"Id\":\"x\"",
        b"{\"ServiceDescriptor\":\"Svc.M\"}",
        b"\xEF\xBB\xBF{",
        b"\xff\xfe{}",
    ] {
        let err = decode_route(input).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Malformed,
            "{:?}: {err}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn optional_address_fields_round_trip() {
    let mut full = Address::new("10.0.0.7", 9000);
    full.wan_ip = Some("203.0.113.7".to_owned());
    full.ws_port = Some(9001);
    full.mqtt_port = Some(9002);
    full.http_port = Some(8080);
    full.processor_time = Some(12.5);
    full.weight = Some(5);
    full.timestamp = Some(1_700_000_000_123);

    let mut zeroes = Address::new("10.0.0.8", 9000);
    zeroes.http_port = Some(0);
    zeroes.weight = Some(0);
    zeroes.processor_time = Some(0.25);
    zeroes.timestamp = Some(-1);

    let plain = Address::new("10.0.0.9", 9000);

    let route = ServiceRoute::new(
        ServiceDescriptor::new("Svc.M_id", "api/svc/m/{id}")
            .with_token("tok")
            .with_metadata("HttpMethod", "GET"),
        vec![full.clone(), zeroes.clone(), plain.clone()],
    );
    let bytes = encode_route(&route).unwrap();

    // The optional fields are written under Surging's names, and absent ones are left out.
    let wire = wire_value(&bytes);
    let first = &wire["AddressDescriptors"][0]["Value"];
    assert_eq!(first["WanIp"], json!("203.0.113.7"));
    assert_eq!(first["HttpPort"], json!(8080));
    assert_eq!(first["Wt"], json!(5));
    assert_eq!(first["Tp"], json!(1_700_000_000_123_i64));
    assert_eq!(first["ProcessorTime"], json!(12.5));
    let third = wire["AddressDescriptors"][2]["Value"].as_object().unwrap();
    let mut keys: Vec<&str> = third.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["Ip", "Port"]);

    let decoded = decode_route(&bytes).unwrap();
    assert_eq!(decoded, route);
    assert_eq!(owned(&decoded.addresses), vec![full, zeroes, plain]);

    // The value form decodes to the same route.
    let value = encode_route_value(&route).unwrap();
    let from_value = decode_route(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert_eq!(from_value, route);
}

// ---------------------------------------------------------------------------------------------
// 2. Templates and service ids
// ---------------------------------------------------------------------------------------------

#[test]
fn template_api_service_appends_method() {
    let template = RouteTemplate::parse("Api/{Service}").unwrap();
    assert_eq!(
        template
            .expand("IRoteMangeService", "GetServiceById", None)
            .unwrap(),
        "api/rotemange/getservicebyid"
    );
}

#[test]
fn template_with_method_and_method_route() {
    let template = RouteTemplate::parse("api/{Service}/{Method}").unwrap();
    assert_eq!(
        template
            .expand("IUserService", "GetUserName", Some("{id}"))
            .unwrap(),
        "api/user/getusername/{id}"
    );
    assert_eq!(
        template
            .expand("IUserService", "GetUserName", None)
            .unwrap(),
        "api/user/getusername"
    );
}

#[test]
fn template_with_full_interface_names() {
    let api_service = RouteTemplate::parse("Api/{Service}").unwrap();
    assert_eq!(
        api_service
            .expand(
                "Surging.IModuleServices.Common.IRoteMangeService",
                "GetServiceById",
                None
            )
            .unwrap(),
        "api/rotemange/getservicebyid"
    );
    let with_method = RouteTemplate::parse("api/{Service}/{Method}").unwrap();
    assert_eq!(
        with_method
            .expand(
                "Surging.IModuleServices.Common.IUserService",
                "GetUserName",
                Some("{id}")
            )
            .unwrap(),
        "api/user/getusername/{id}"
    );
    assert_eq!(
        service_short_name("Surging.IModuleServices.Common.IUserService").unwrap(),
        "User"
    );
    assert_eq!(service_short_name("IUserService").unwrap(), "User");
    assert_eq!(
        service_short_name("IRoteMangeService").unwrap(),
        "RoteMange"
    );
}

#[test]
fn service_id_joins_parameters_with_underscores() {
    assert_eq!(
        service_id(
            "Surging.IModuleServices.Common.IUserService",
            "GetUserName",
            &["id"]
        ),
        "Surging.IModuleServices.Common.IUserService.GetUserName_id"
    );
    assert_eq!(
        service_id(
            "Surging.IModuleServices.Common.IUserService",
            "Save",
            &["requestData", "token"]
        ),
        "Surging.IModuleServices.Common.IUserService.Save_requestData_token"
    );
    let no_params = service_id(
        "Surging.IModuleServices.Common.IUserService",
        "GetUser",
        &[],
    );
    assert_eq!(
        no_params,
        "Surging.IModuleServices.Common.IUserService.GetUser"
    );
    assert!(!no_params.contains('_'));
}

#[test]
fn malformed_templates_are_invalid_input() {
    for template in [
        "",
        "/",
        "//",
        "api/{x",
        "api/{}",
        "api/x}",
        "api/{a}{b}",
        "{",
    ] {
        let err = RouteTemplate::parse(template).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{template:?}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Key encoding
// ---------------------------------------------------------------------------------------------

#[test]
fn instance_ids_are_clean_keys_and_parse_back() {
    let port = 98;
    for host in ["192.168.1.10", "127.0.0.1", "api-1.example.com", "my_host"] {
        let id = instance_id(&Address::new(host, port)).unwrap();
        assert!(is_clean_key(&id), "{host}: {id:?}");
        let back = parse_instance_id(&id).unwrap();
        assert_eq!(back.ip, host, "{id:?}");
        assert_eq!(back.port, port, "{id:?}");
    }
    assert_eq!(
        instance_id(&Address::new("192.168.1.10", 98)).unwrap(),
        "192.168.1.10_98"
    );
}

#[test]
fn ipv6_instance_ids_are_clean_keys_and_parse_back() {
    let port = 7;
    for host in [
        "::1",
        "2001:db8::1",
        "::ffff:1.2.3.4",
        "2001:DB8:0:0:0:0:0:1",
    ] {
        let id = instance_id(&Address::new(host, port)).unwrap();
        assert!(is_clean_key(&id), "{host}: {id:?}");
        let back = parse_instance_id(&id).unwrap();
        assert_eq!(
            back.ip.parse::<Ipv6Addr>().unwrap(),
            host.parse::<Ipv6Addr>().unwrap(),
            "{id:?}"
        );
        assert_eq!(back.port, port, "{id:?}");
    }
    assert_eq!(instance_id(&Address::new("::1", 98)).unwrap(), ",,1_98");
}

#[test]
fn ipv6_with_zone_instance_id_is_clean_and_parses_back() {
    let id = instance_id(&Address::new("fe80::1%eth0", 7)).unwrap();
    assert!(is_clean_key(&id), "{id:?}");
    assert_eq!(id, "fe80,,1=eth0_7");
    let back = parse_instance_id(&id).unwrap();
    let (addr, zone) = back.ip.split_once('%').expect("zone kept");
    assert_eq!(
        addr.parse::<Ipv6Addr>().unwrap(),
        "fe80::1".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(zone, "eth0");
    assert_eq!(back.port, 7);

    // A zone with an underscore still splits at the port's underscore.
    let id = instance_id(&Address::new("fe80::1%eth_0", 7)).unwrap();
    assert!(is_clean_key(&id), "{id:?}");
    let back = parse_instance_id(&id).unwrap();
    assert_eq!(back.ip, "fe80::1%eth_0");
    assert_eq!(back.port, 7);
}

#[test]
fn bracketed_ipv6_host_encodes_like_the_bare_literal() {
    let bracketed = instance_id(&Address::new("[::1]", 80)).unwrap();
    let bare = instance_id(&Address::new("::1", 80)).unwrap();
    assert_eq!(bracketed, bare);
}

#[test]
fn instance_id_rejects_ipv6_zone_that_would_make_a_dotdot_key() {
    // A zone may contain '.', so "a..b" would put ".." into the instance id and the key. The id
    // must be refused up front, like every other host that cannot be encoded.
    match instance_id(&Address::new("fe80::1%a..b", 7)) {
        Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}"),
        Ok(id) => panic!("instance id {id:?} contains \"..\" and is not a clean key"),
    }
}

#[test]
fn full_instance_key_validates_and_parses_back() {
    let layout = KeyLayout::default();
    assert_eq!(layout.prefix(), DEFAULT_PREFIX);
    let service = "Surging.IModuleServices.Common.IUserService.GetUserName_id";
    for host in ["192.168.1.10", "::1", "fe80::1%eth0", "api-1.example.com"] {
        let instance = instance_id(&Address::new(host, 98)).unwrap();
        let key = layout.instance_key(service, &instance).unwrap();
        assert_eq!(key, format!("{DEFAULT_PREFIX}{service}/{instance}"));
        validate_key(&key).unwrap();
        assert!(is_clean_key(&key), "{key:?}");
        let parsed = layout.parse(&key).expect("key under the prefix");
        assert_eq!(parsed.service_id, service);
        assert_eq!(parsed.instance_id.as_deref(), Some(instance.as_str()));
    }
}

#[test]
fn legacy_key_parses_without_instance_id() {
    let layout = KeyLayout::default();
    let service = "Surging.IModuleServices.Common.IUserService.GetUserName_id";
    let parsed = layout.parse(&format!("{DEFAULT_PREFIX}{service}")).unwrap();
    assert_eq!(parsed.service_id, service);
    assert_eq!(parsed.instance_id, None);
}

#[test]
fn keys_outside_the_prefix_parse_to_none() {
    let layout = KeyLayout::default();
    for key in [
        "",
        "other/Svc.M/10.0.0.1_80",
        "services/serviceRoutesX/Svc.M",
        "services/serviceRoutes",
        "services/serviceRoutes/",
        "/services/serviceRoutes/Svc.M",
        "services/serviceCommands/Svc.M",
    ] {
        assert_eq!(layout.parse(key), None, "{key:?}");
    }
}

#[test]
fn unencodable_hosts_are_invalid_input() {
    for host in [
        "bad host",
        "a/b",
        "ho%st",
        "",
        "..x",
        "héllo",
        "ホスト",
        "a..b",
        ".x",
        "a,b",
        "a=b",
    ] {
        match instance_id(&Address::new(host, 80)) {
            Err(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput, "{host:?}: {err}"),
            Ok(id) => panic!("host {host:?} was encoded as {id:?}"),
        }
    }
}

#[test]
fn bad_service_ids_are_invalid_input() {
    let layout = KeyLayout::default();
    for id in ["a/b", "a b", " Svc.M", "a..b", "..", "", "Svc.M\n", "Svc:M"] {
        let err = validate_service_id(id).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{id:?}: {err}");
        let err = layout.instance_key(id, "10.0.0.1_80").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{id:?}: {err}");
    }
    validate_service_id("Surging.IModuleServices.Common.IUserService.GetUserName_id").unwrap();
}

#[test]
fn bad_instance_ids_do_not_parse() {
    for id in [
        "",
        "host",
        "host_",
        "host_0",
        "host_70000",
        "host_x",
        ",,zz_80",
        "bad host_80",
    ] {
        let err = parse_instance_id(id).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{id:?}: {err}");
    }
}

#[test]
fn address_parse_accepts_host_port_forms() {
    let v4 = Address::parse("127.0.0.1:80").unwrap();
    assert_eq!((v4.ip.as_str(), v4.port), ("127.0.0.1", 80));

    let v6 = Address::parse("[::1]:80").unwrap();
    assert_eq!((v6.ip.as_str(), v6.port), ("::1", 80));
    assert_eq!(v6.to_string(), "[::1]:80");

    let named = Address::parse("host:80").unwrap();
    assert_eq!((named.ip.as_str(), named.port), ("host", 80));

    let max = Address::parse("host:65535").unwrap();
    assert_eq!(max.port, 65535);
}

#[test]
fn address_parse_rejects_bad_forms() {
    for text in [
        "host",
        "host:0",
        "host:99999",
        "host:",
        ":80",
        "[::1]80",
        "host:-1",
    ] {
        let err = Address::parse(text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{text:?}: {err}");
    }
}

/// The addresses as plain values, to compare with expected ones.
fn owned(addresses: &[std::sync::Arc<Address>]) -> Vec<Address> {
    addresses.iter().map(|a| (**a).clone()).collect()
}
