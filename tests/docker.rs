//! Real containers with a real Docker daemon. Each test starts with
//! `require_docker()`: without a daemon it fails under `CI=true` and says it
//! skipped elsewhere.

mod common;

use common::docker::*;
use common::*;

#[test]
fn the_helper_builds_distinct_images_and_removes_what_it_made() {
    if !require_docker() {
        return;
    }
    // Versions of its own, so no other test of this process holds the
    // images when this guard lets go of them.
    let (tags, prefix, port);
    {
        let docker = Docker::new("selftest");
        let v1 = docker.demo_image("self1");
        let v2 = docker.demo_image("self2");
        assert_ne!(v1.id, v2.id, "a different /version is a different image");
        assert_eq!(docker.demo_image("self1"), v1, "built once per process");
        let moving = docker.tag(&v1.id, "app");
        assert_eq!(docker.image_id(&moving), v1.id);
        assert_eq!(docker.image_id(&docker.tag(&v2.tag, "app")), v2.id);

        port = free_ports().proxy;
        let name = docker.name("run");
        docker_ok(&[
            "run",
            "-d",
            "--init",
            "--name",
            &name,
            "-p",
            &format!("127.0.0.1:{port}:{DEMO_APP_PORT}"),
            &moving,
        ]);
        // docker-proxy accepts before the app listens: wait for an answer.
        let r = wait_for("the container's demo to answer", || {
            request(port, "GET", "/", b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(r.body.starts_with("version=self2 "), "{}", r.body);
        let r = request(port, "POST", "/echo", b"hello").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "hello"));
        assert_eq!(docker.running(), vec![name.clone()]);
        tags = vec![v1.tag, v2.tag, moving];
        prefix = docker.prefix().to_string();
    }
    let left: Vec<String> = docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
    for tag in tags {
        assert!(
            docker(&["image", "inspect", &tag]).is_err(),
            "{tag} is left"
        );
    }
    assert!(port_is_free(port), "docker-proxy still holds {port}");
}
