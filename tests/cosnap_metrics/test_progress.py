"""Progress lines: redrawn in place on a terminal, a few whole lines elsewhere; Maven's output
turned into `fetching N jars (n/N)`."""

from __future__ import annotations

import io

from cosnap_metrics.broker import MavenProgress
from cosnap_metrics.progress import ProgressLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_redrawn_with_a_bar() -> None:
    out = Terminal()
    progress = ProgressLine("demo", stream=out)
    progress.update("sent 50", 0.5)
    progress.update("sent 100", 1.0)
    progress.finish("done")
    assert out.getvalue() == (
        f"\r\x1b[K[demo] [{'#' * 12}{' ' * 12}] sent 50"
        f"\r\x1b[K[demo] [{'#' * 24}] sent 100"
        "\r\x1b[K[demo] done\n"
    )


def test_a_log_file_gets_the_first_state_and_then_a_line_every_few_seconds() -> None:
    out = io.StringIO()
    progress = ProgressLine("demo", stream=out, every_s=60)
    for sent in range(0, 1000, 50):
        progress.update(f"sent {sent}", sent / 1000)
    progress.note("a phase")
    progress.finish("sent 1000")
    assert out.getvalue() == "[demo] sent 0\n[demo] a phase\n[demo] sent 1000\n"


# `mvn -B dependency:tree`, then `mvn -B dependency:copy-dependencies`, on an empty local
# repository (shortened): the tree downloads POMs and the plugin, the copy the tree's jars.
CENTRAL = "from central: https://repo.maven.apache.org/maven2"
TREE = f"""\
[INFO] Downloading {CENTRAL}/org/apache/maven/plugins/maven-dependency-plugin/3.8.1/maven-dependency-plugin-3.8.1.pom
[INFO] Downloaded {CENTRAL}/org/apache/maven/plugins/maven-dependency-plugin/3.8.1/maven-dependency-plugin-3.8.1.pom (18 kB at 80 kB/s)
[INFO] Downloaded {CENTRAL}/org/apache/maven/plugins/maven-dependency-plugin/3.8.1/maven-dependency-plugin-3.8.1.jar (207 kB at 1.1 MB/s)
[INFO] --- maven-dependency-plugin:3.8.1:tree (default-cli) @ kafka-broker-classpath ---
[INFO] cosnap-metrics:kafka-broker-classpath:pom:1
[INFO] +- org.apache.kafka:kafka_2.13:jar:4.1.1:compile
[INFO] |  +- org.apache.kafka:kafka-clients:jar:4.1.1:compile
[INFO] |  |  \\- org.lz4:lz4-java:jar:1.8.0:runtime
[INFO] BUILD SUCCESS
"""  # noqa: E501
COPY = f"""\
[INFO] Downloading {CENTRAL}/org/apache/kafka/kafka_2.13/4.1.1/kafka_2.13-4.1.1.jar
[INFO] Downloaded {CENTRAL}/org/lz4/lz4-java/1.8.0/lz4-java-1.8.0.jar (683 kB at 704 kB/s)
[INFO] Downloaded {CENTRAL}/org/apache/kafka/kafka_2.13/4.1.1/kafka_2.13-4.1.1.jar (2.1 MB at 1.6 MB/s)
[INFO] --- maven-dependency-plugin:3.8.1:copy-dependencies (default-cli) @ kafka-broker-classpath ---
[INFO] BUILD SUCCESS
"""


def test_mavens_output_becomes_jars_fetched_out_of_the_trees_count() -> None:
    out = io.StringIO()
    progress = MavenProgress(ProgressLine("kafka", stream=out, every_s=0))
    for line in TREE.splitlines():
        progress.tree(line)
    for line in COPY.splitlines():
        progress.copy(line)
    assert out.getvalue().splitlines() == [
        "[kafka] resolving the dependencies (1 files read)",
        "[kafka] resolving the dependencies (2 files read)",
        "[kafka] fetching 3 jars from Maven Central (1/3) lz4-java-1.8.0.jar",
        "[kafka] fetching 3 jars from Maven Central (2/3) kafka_2.13-4.1.1.jar",
    ]
    assert (progress.jars, progress.fetched) == (3, 2)  # kafka-clients was in the local repository
