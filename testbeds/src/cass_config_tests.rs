use super::*;

fn v(s: &str) -> Version {
    supported(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn keys(v: Version) -> Vec<&'static str> {
    yaml_edits(v)
        .into_iter()
        .filter(|e| !matches!(e, Edit::Unset(_)))
        .map(Edit::key)
        .collect()
}

/// Stock conf of a 4.x tarball: Java 11 options with module flags, nothing for 17.
fn conf_4x() -> JavaConf {
    JavaConf {
        option_files: vec![
            "jvm-server.options".into(),
            "jvm11-server.options".into(),
            "jvm8-server.options".into(),
        ],
        flag_files: vec!["jvm11-server.options".into()],
    }
}

#[test]
fn supported_lines_are_2_2_to_5_0() {
    for ok in [
        "2.2.18", "3.0.29", "3.1", "3.11.16", "4.0.13", "4.1.5", "5.0.2", "5.0-rc1",
    ] {
        assert!(supported(ok).is_ok(), "{ok}");
    }
    for bad in [
        "2.1.22", "1.2.19", "6.0.0", "3.12.0", "4.2", "garbage", "", "5",
    ] {
        let e = supported(bad).expect_err(bad);
        let m = e.to_string();
        assert!(m.contains(&format!("Cassandra {bad} ")), "{m}");
        assert!(
            m.contains("CGSNAP_CASSANDRA_HOME") && !m.contains('\n'),
            "{m}"
        );
    }
    assert_eq!(
        parse("3.11.16"),
        Some(Version {
            major: 3,
            minor: 11
        })
    );
}

#[test]
fn v2_2_gets_neither_hints_nor_cdc_and_needs_a_window() {
    let k = keys(v("2.2.18"));
    assert!(!k.contains(&"hints_directory") && !k.contains(&"cdc_raw_directory"));
    assert!(k.contains(&"start_rpc") && k.contains(&"commitlog_directory"));
    assert_eq!(batch_window_ms(v("2.2.18")), Some(2));
    assert_eq!(period_key(v("2.2.18")), "commitlog_sync_period_in_ms");
    assert_eq!(period_value(v("2.2.18"), 10_000), "10000");
}

#[test]
fn v3_0_gets_hints_but_no_cdc() {
    let k = keys(v("3.0.29"));
    assert!(k.contains(&"hints_directory") && !k.contains(&"cdc_raw_directory"));
    assert!(k.contains(&"start_rpc"));
    assert_eq!(batch_window_ms(v("3.0.29")), Some(2));
    // cdc came with 3.8 of the tick-tock line.
    assert!(!keys(v("3.7")).contains(&"cdc_raw_directory"));
    assert!(keys(v("3.8")).contains(&"cdc_raw_directory"));
}

#[test]
fn v3_11_gets_hints_cdc_and_still_thrift_off() {
    let k = keys(v("3.11.16"));
    assert!(k.contains(&"hints_directory") && k.contains(&"cdc_raw_directory"));
    assert!(k.contains(&"start_rpc"));
    assert_eq!(batch_window_ms(v("3.11.16")), Some(2));
    assert_eq!(period_key(v("3.11.16")), "commitlog_sync_period_in_ms");
}

#[test]
fn v4_0_drops_thrift_keys_and_the_window() {
    let k = keys(v("4.0.13"));
    assert!(k.contains(&"hints_directory") && k.contains(&"cdc_raw_directory"));
    assert!(!k.contains(&"start_rpc") && !k.contains(&"rpc_port"));
    assert_eq!(batch_window_ms(v("4.0.13")), None);
    assert_eq!(period_key(v("4.0.13")), "commitlog_sync_period_in_ms");
    assert_eq!(period_value(v("4.0.13"), 2000), "2000");
}

#[test]
fn v4_1_and_5_0_spell_the_period_with_a_unit() {
    for s in ["4.1.5", "5.0.2"] {
        assert_eq!(period_key(v(s)), "commitlog_sync_period", "{s}");
        assert_eq!(period_value(v(s), 2000), "2000ms", "{s}");
        assert_eq!(batch_window_ms(v(s)), None, "{s}");
        assert!(!keys(v(s)).contains(&"start_rpc"), "{s}");
    }
}

#[test]
fn edits_file_lists_exactly_the_version_keys() {
    let f = edits_file("2.2.18", v("2.2.18"));
    assert!(f.lines().any(|l| l == "version 2.2.18"), "{f}");
    assert!(f.contains("\nset cluster_name 'cgsnap'\n"), "{f}");
    assert!(f.contains("\nlist data_file_directories /cassdata/data\n"));
    assert!(f.contains("\nbatch_window_ms 2\n") && !f.contains("hints_directory"));
    let g = edits_file("5.0.2", v("5.0.2"));
    assert!(g.contains("\nset hints_directory /cassdata/hints\n"), "{g}");
    assert!(
        !g.contains("batch_window_ms") && !g.contains("start_rpc"),
        "{g}"
    );
    assert_ne!(f, g, "different versions give different image inputs");
}

#[test]
fn java_17_runs_5_0_but_not_stock_4_x_3_x_or_2_2() {
    let jre = DEFAULT_JRE;
    let stock5 = JavaConf {
        option_files: vec!["jvm17-server.options".into(), "jvm11-server.options".into()],
        flag_files: vec!["jvm17-server.options".into(), "jvm11-server.options".into()],
    };
    assert_eq!(check_java("5.0.2", v("5.0.2"), jre, &stock5), Ok(()));
    // 4.x's Java 11 flags are stock, not a sign of Java 17.
    let e = check_java("4.1.5", v("4.1.5"), jre, &conf_4x()).expect_err("4.1 on 17");
    let m = e.to_string();
    assert!(m.contains("Cassandra 4.1.5 needs Java 8 or 11"), "{m}");
    assert!(m.contains("Java 17") && m.contains(JRE_VAR), "{m}");
    assert!(
        m.contains("openjdk-11-jre-headless") && !m.contains('\n'),
        "{m}"
    );
    let e = check_java("3.11.16", v("3.11.16"), jre, &JavaConf::default()).expect_err("3.11");
    assert!(e.to_string().contains("needs Java 8,"), "{e}");
    let e = check_java("2.2.18", v("2.2.18"), jre, &JavaConf::default()).expect_err("2.2");
    assert!(e.to_string().contains("openjdk-8-jre-headless"), "{e}");
}

#[test]
fn a_distribution_prepared_for_newer_java_or_a_matching_jre_is_accepted() {
    let jre = DEFAULT_JRE;
    let env = JavaConf {
        option_files: vec![],
        flag_files: vec!["cassandra-env.sh".into()],
    };
    assert_eq!(check_java("2.2.18", v("2.2.18"), jre, &env), Ok(()));
    let opts = JavaConf {
        option_files: vec!["jvm.options".into()],
        flag_files: vec!["jvm.options".into()],
    };
    assert_eq!(check_java("3.11.16", v("3.11.16"), jre, &opts), Ok(()));
    let mut four = conf_4x();
    four.option_files.push("jvm17-server.options".into());
    assert_eq!(check_java("4.1.5", v("4.1.5"), jre, &four), Ok(()));
    let j11 = "openjdk-11-jre-headless";
    assert_eq!(check_java("4.0.13", v("4.0.13"), j11, &conf_4x()), Ok(()));
    let e = check_java("5.0.2", v("5.0.2"), "openjdk-8-jre-headless", &conf_4x());
    assert!(e.is_err(), "5.0 does not run on 8");
    // A package name without a Java version: trusted, the image build checks `java -version`.
    assert_eq!(
        check_java("2.2.18", v("2.2.18"), "default-jre-headless", &conf_4x()),
        Ok(())
    );
    assert_eq!(package_java("openjdk-17-jre-headless"), Some(17));
    assert_eq!(package_java("temurin-8-jre"), Some(8));
}

#[test]
fn module_flags_count_only_on_active_lines_and_conf_is_read() {
    assert!(has_module_flags(
        "-Xss256k\n--add-exports java.base/jdk.internal.misc=ALL-UNNAMED\n"
    ));
    assert!(has_module_flags(
        "JVM_OPTS=\"$JVM_OPTS --add-opens java.base/java.nio=ALL-UNNAMED\"\n"
    ));
    assert!(!has_module_flags("# --add-exports x=y\n-Xss256k\n"));
    let d = std::env::temp_dir().join(format!("cgsnap-javaconf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("cassandra-env.sh"), "JVM_OPTS=--add-opens=a\n").expect("env");
    std::fs::write(d.join("jvm11-server.options"), "# nothing\n").expect("opts");
    std::fs::write(d.join("logback.xml"), "--add-opens").expect("other");
    let c = read_java_conf(&d);
    std::fs::remove_dir_all(&d).expect("cleanup");
    assert_eq!(c.option_files, ["jvm11-server.options"]);
    assert_eq!(c.flag_files, ["cassandra-env.sh"]);
}
