//! The charts are well-formed SVG whose geometry says what the data says.

use super::*;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).expect("t")
}

fn chart_of(series: &[Series], target: Option<f64>) -> String {
    render(&Chart {
        title: "Recovery <RTO> & more",
        unit: "s",
        from: t(0),
        to: t(86_400 * 30),
        series,
        target,
    })
}

fn attr(n: &roxmltree::Node, a: &str) -> f64 {
    n.attribute(a).expect(a).parse().expect("number")
}

#[test]
fn points_above_the_target_are_drawn_above_its_line() {
    let s = vec![
        Series {
            name: "orders".into(),
            points: vec![(t(0), 10.0, "g-1".into()), (t(86_400), 50.0, "g-2".into())],
        },
        Series {
            name: "payments".into(),
            points: vec![(t(3600), 20.0, "g-1".into())],
        },
    ];
    let svg = chart_of(&s, Some(30.0));
    let doc = roxmltree::Document::parse(&svg).expect("well-formed");
    let lines = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("series"))
        .count();
    assert_eq!(lines, 2);
    let target = doc
        .descendants()
        .find(|n| n.attribute("class") == Some("target"))
        .expect("target line");
    let ty = attr(&target, "y1");
    let cys: Vec<(f64, String)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .map(|n| {
            let title = n.first_element_child().and_then(|c| c.text()).unwrap_or("");
            (attr(&n, "cy"), title.to_string())
        })
        .collect();
    assert_eq!(cys.len(), 3);
    for (cy, title) in &cys {
        let above = title.ends_with("50");
        assert_eq!(*cy < ty, above, "{title} at {cy}, target at {ty}");
    }
    assert!(
        svg.contains("Recovery &lt;RTO&gt; &amp; more"),
        "escaped title"
    );
    assert!(!svg.contains("<script"), "no script");
}

#[test]
fn the_axis_always_reaches_the_target() {
    let s = vec![Series {
        name: "a".into(),
        points: vec![(t(0), 0.2, "g-1".into())],
    }];
    let c = Chart {
        title: "x",
        unit: "s",
        from: t(0),
        to: t(10),
        series: &s,
        target: Some(300.0),
    };
    assert!(y_max(&c) >= 300.0);
    assert_eq!(
        y_max(&Chart {
            target: None,
            ..c.clone()
        }),
        0.5
    );
}

#[test]
fn an_empty_chart_says_so() {
    let svg = chart_of(&[], Some(5.0));
    let doc = roxmltree::Document::parse(&svg).expect("well-formed");
    assert!(
        doc.descendants()
            .any(|n| n.attribute("class") == Some("empty"))
    );
    assert!(nice(0.7) == 1.0 && nice(1.2) == 2.0 && nice(3.0) == 5.0 && nice(60.0) == 100.0);
}
