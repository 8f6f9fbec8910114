#include "patching/discovery/circuit_output.h"

#include "core/formats/hdf5_file.h"
#include "core/formats/text_file.h"
#include "core/util/error.h"

#include <ATen/ATen.h>

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>
#include <vector>

extern char** environ;

namespace mechlab::discovery {

namespace {

// The picture's row (Graphviz rank) of a node: the input, then per layer its
// heads and then its MLP, then the output.
int node_rank(const patching::CircuitGraph& g, const patching::CircuitNode& n) {
  switch (n.kind) {
    case patching::CircuitNode::Kind::input: return 0;
    case patching::CircuitNode::Kind::head: return 1 + 2 * n.layer;
    case patching::CircuitNode::Kind::mlp: return 2 + 2 * n.layer;
    case patching::CircuitNode::Kind::output: return 1 + 2 * g.cfg().n_layers;
  }
  return 0;
}

namespace fs = std::filesystem;
using patching::CircuitNode;
using patching::ReceiverChannel;
using patching::ReceiverInput;

// Edge colours (colour-blind-safe Okabe-Ito): q blue, k green, v vermillion,
// MLP/output inputs grey.
const char* channel_colour(ReceiverChannel c) {
  switch (c) {
    case ReceiverChannel::q: return "#0072B2";
    case ReceiverChannel::k: return "#009E73";
    case ReceiverChannel::v: return "#D55E00";
    case ReceiverChannel::resid: return "#777777";
  }
  return "#777777";
}

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// The node a receiver input belongs to (heads read it; for GQA <k>/<v> the
// kv head's number names the input, and the first query head of its group
// stands for the group in the picture).
CircuitNode reader_of(const patching::CircuitGraph& g, const ReceiverInput& r) {
  if (r.node.kind != CircuitNode::Kind::head || r.channel == ReceiverChannel::q) return r.node;
  const int group = g.cfg().n_heads / g.cfg().kv_heads();
  return {CircuitNode::Kind::head, r.node.layer, r.node.head * group};
}

// Runs `argv` (argv[0] looked up on PATH) and returns its exit status, or
// -errno when it could not be started.
int run_program(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ);
  if (rc != 0) return -rc;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -errno;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

}  // namespace

nlohmann::json circuit_document(const CircuitRecord& record) {
  return {{"mechlab_format", kCircuitFormat}, {"config", record.config},
          {"versions", record.versions},      {"results", record.results},
          {"circuit", record.circuit.to_json()}, {"trace", record.trace}};
}

namespace {

// A position-split circuit: one node per (component, position) with a kept
// edge, named "a0.h3 @5"; rows are the ranks of the unsplit picture (input,
// each layer's heads, its MLP, output), columns the positions, headed by
// their labels. Invisible heavy edges hold each column together; invisible
// edges along each row keep the columns in position order.
std::string split_circuit_dot(const Circuit& circuit, const std::string& title) {
  const patching::CircuitGraph& g = circuit.graph();
  struct Drawn {
    CircuitNode sender, reader;
    int64_t pos;
    ReceiverChannel channel;
    double score;
  };
  std::vector<Drawn> drawn;
  const at::Tensor removed = circuit.removed_mask();  // [pos, receivers, senders]
  auto rm = removed.accessor<float, 3>();
  double max_abs = 0.0;
  for (const CircuitEdge& e : circuit.edges()) {
    if (e.kind != CircuitEdge::Kind::residual || !circuit.kept(e) || rm[e.pos][e.receiver][e.sender] != 0.0f) continue;
    const ReceiverInput& r = g.receivers()[static_cast<size_t>(e.receiver)];
    const double s = circuit.score(e);
    drawn.push_back({g.senders()[static_cast<size_t>(e.sender)], reader_of(g, r), e.pos, r.channel, s});
    if (!std::isnan(s)) max_abs = std::max(max_abs, std::fabs(s));
  }
  auto row_of = [&](const CircuitNode& n) { return node_rank(g, n); };
  auto name_of = [](const CircuitNode& n, int64_t p) { return patching::node_name(n) + " @" + std::to_string(p); };
  // (row, position) -> node names in that cell, in canonical order.
  std::map<std::pair<int, int64_t>, std::vector<std::string>> cells;
  std::map<std::string, CircuitNode> nodes;
  for (const Drawn& d : drawn) {
    for (const CircuitNode& n : {d.sender, d.reader}) {
      const std::string name = name_of(n, d.pos);
      if (nodes.emplace(name, n).second) cells[{row_of(n), d.pos}].push_back(name);
    }
  }
  std::vector<int64_t> positions;  // columns with a node, in order
  std::vector<int> rows;
  for (const auto& [cell, names] : cells) {
    if (std::find(positions.begin(), positions.end(), cell.second) == positions.end()) positions.push_back(cell.second);
    if (std::find(rows.begin(), rows.end(), cell.first) == rows.end()) rows.push_back(cell.first);
  }
  std::sort(positions.begin(), positions.end());
  std::sort(rows.begin(), rows.end());
  auto label_of = [&](int64_t p) {
    const auto& labels = circuit.position_labels();
    return labels.empty() ? "pos " + std::to_string(p) : labels[static_cast<size_t>(p)];
  };

  std::ostringstream o;
  o << "digraph circuit {\n"
    << "  graph [rankdir=TB, ranksep=0.5, nodesep=0.25, newrank=true, labelloc=t, fontname=\"Helvetica\", label="
    << quoted(title).substr(0, quoted(title).size() - 1) << "\\n"
    << quoted(std::to_string(circuit.edge_count()) + " of " + std::to_string(circuit.edges().size()) +
              " (edge, position) pairs kept; columns: token positions; edges into q: blue, k: green, v: orange-red, "
              "MLP/output: grey; width: |score|")
           .substr(1)
    << "];\n"
    << "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fillcolor=\"#eeeeee\"];\n"
    << "  edge [arrowsize=0.6];\n";
  // The header row: one plain node per column.
  o << "  { rank=same;";
  for (int64_t p : positions) o << " " << quoted("col " + std::to_string(p)) << " [shape=plaintext, style=\"\", label=" << quoted(label_of(p)) << "];";
  o << " }\n";
  for (int row : rows) {
    o << "  { rank=same;";
    for (int64_t p : positions) {
      const auto it = cells.find({row, p});
      if (it == cells.end()) continue;
      for (const std::string& name : it->second) {
        const CircuitNode& n = nodes.at(name);
        const char* fill = n.kind == CircuitNode::Kind::head  ? "#cfe3f5"
                           : n.kind == CircuitNode::Kind::mlp ? "#fbe3c8"
                                                              : "#dddddd";
        o << " " << quoted(name) << " [fillcolor=\"" << fill << "\", label=" << quoted(patching::node_name(n)) << "];";
      }
    }
    o << " }\n";
  }
  // Columns: header -> first node of the column in each row, heavy and invisible.
  for (int64_t p : positions) {
    std::string prev = "col " + std::to_string(p);
    for (int row : rows) {
      const auto it = cells.find({row, p});
      if (it == cells.end()) continue;
      o << "  " << quoted(prev) << " -> " << quoted(it->second.front()) << " [style=invis, weight=20];\n";
      prev = it->second.front();
    }
  }
  // Column order along the header row.
  for (size_t i = 1; i < positions.size(); ++i) {
    o << "  " << quoted("col " + std::to_string(positions[i - 1])) << " -> "
      << quoted("col " + std::to_string(positions[i])) << " [style=invis];\n";
  }
  for (const Drawn& d : drawn) {
    const double w = (max_abs > 0 && !std::isnan(d.score)) ? 1.0 + 5.0 * std::fabs(d.score) / max_abs : 1.0;
    char width[32];
    std::snprintf(width, sizeof width, "%.2f", w);
    o << "  " << quoted(name_of(d.sender, d.pos)) << " -> " << quoted(name_of(d.reader, d.pos)) << " [color=\""
      << channel_colour(d.channel) << "\", penwidth=" << width << ", weight=0";
    if (!std::isnan(d.score)) {
      char tip[64];
      std::snprintf(tip, sizeof tip, "%+.4g", d.score);
      o << ", tooltip=" << quoted(std::string(tip));
    }
    o << "];\n";
  }
  o << "}\n";
  return o.str();
}

}  // namespace

std::string circuit_dot(const Circuit& circuit, const std::string& title) {
  if (circuit.split()) return split_circuit_dot(circuit, title);
  const patching::CircuitGraph& g = circuit.graph();
  // Drawn edges: residual, kept, with the receiver's head input kept.
  struct Drawn {
    CircuitNode sender, reader;
    ReceiverChannel channel;
    double score;
  };
  std::vector<Drawn> drawn;
  const at::Tensor removed = circuit.removed_mask();  // [receivers, senders]
  auto rm = removed.accessor<float, 2>();
  double max_abs = 0.0;
  for (const CircuitEdge& e : circuit.edges()) {
    if (e.kind != CircuitEdge::Kind::residual || !circuit.kept(e) || rm[e.receiver][e.sender] != 0.0f) {
      continue;
    }
    const ReceiverInput& r = g.receivers()[static_cast<size_t>(e.receiver)];
    const double s = circuit.score(e);
    drawn.push_back({g.senders()[static_cast<size_t>(e.sender)], reader_of(g, r), r.channel, s});
    if (!std::isnan(s)) max_abs = std::max(max_abs, std::fabs(s));
  }
  auto rank_of = [&](const CircuitNode& n) { return node_rank(g, n); };
  std::map<int, std::vector<std::string>> ranks;
  std::map<std::string, CircuitNode> nodes;
  for (const Drawn& d : drawn) {
    for (const CircuitNode& n : {d.sender, d.reader}) nodes.emplace(patching::node_name(n), n);
  }
  for (const auto& [name, n] : nodes) ranks[rank_of(n)].push_back(name);

  std::ostringstream o;
  o << "digraph circuit {\n"
    << "  graph [rankdir=TB, ranksep=0.6, nodesep=0.3, labelloc=t, fontname=\"Helvetica\", label="
    // Two lines: the DOT escape "\n" joins the quoted parts.
    << quoted(title).substr(0, quoted(title).size() - 1) << "\\n"
    << quoted(std::to_string(circuit.edge_count()) + " of " + std::to_string(circuit.edges().size()) +
              " edges kept; edges into q: blue, k: green, v: orange-red, MLP/output: grey; width: |score|")
           .substr(1)
    << "];\n"
    << "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fillcolor=\"#eeeeee\"];\n"
    << "  edge [arrowsize=0.6];\n";
  for (const auto& [rank, names] : ranks) {
    o << "  { rank=same;";
    for (const auto& name : names) {
      const CircuitNode& n = nodes.at(name);
      const char* fill = n.kind == CircuitNode::Kind::head  ? "#cfe3f5"
                         : n.kind == CircuitNode::Kind::mlp ? "#fbe3c8"
                                                            : "#dddddd";
      o << " " << quoted(name) << " [fillcolor=\"" << fill << "\"];";
    }
    o << " }\n";
  }
  // Invisible chain input -> layer ranks -> output keeps the layers in order
  // even where no kept edge joins two adjacent ranks.
  std::vector<std::string> chain;
  for (const auto& [rank, names] : ranks) chain.push_back(names.front());
  for (size_t i = 1; i < chain.size(); ++i) {
    o << "  " << quoted(chain[i - 1]) << " -> " << quoted(chain[i]) << " [style=invis];\n";
  }
  for (const Drawn& d : drawn) {
    const double w = (max_abs > 0 && !std::isnan(d.score)) ? 1.0 + 5.0 * std::fabs(d.score) / max_abs : 1.0;
    char width[32];
    std::snprintf(width, sizeof width, "%.2f", w);
    o << "  " << quoted(patching::node_name(d.sender)) << " -> " << quoted(patching::node_name(d.reader))
      << " [color=\"" << channel_colour(d.channel) << "\", penwidth=" << width;
    if (!std::isnan(d.score)) {
      char tip[64];
      std::snprintf(tip, sizeof tip, "%+.4g", d.score);
      o << ", tooltip=" << quoted(std::string(tip));
    }
    o << "];\n";
  }
  o << "}\n";
  return o.str();
}

CircuitFiles write_circuit_outputs(const std::string& dir, const CircuitRecord& record,
                                   const CircuitOutputOptions& options) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MECHLAB_CHECK(!ec, "cannot create the output folder '", dir, "': ", ec.message());
  CircuitFiles f;
  f.json = (fs::path(dir) / "circuit.json").string();
  f.h5 = (fs::path(dir) / "circuit.h5").string();
  f.dot = (fs::path(dir) / "circuit.dot").string();
  const std::string svg = (fs::path(dir) / "circuit.svg").string();
  const nlohmann::json doc = circuit_document(record);
  const std::string json_text = doc.dump(2) + "\n";
  std::string title = options.title();
  if (title.empty()) {
    title = record.config.value("name", std::string("circuit")) + " (" +
            record.config.value("method", std::string("?")) + ")";
  }

  const Circuit& c = record.circuit;
  nlohmann::json sender_names = nlohmann::json::array(), receiver_names = nlohmann::json::array();
  for (const auto& s : c.graph().senders()) sender_names.push_back(patching::node_name(s));
  for (const auto& r : c.graph().receivers()) receiver_names.push_back(patching::receiver_name(r));
  // Scores as [senders, receivers] / [receivers], NaN where no edge or no score.
  // Split by position: a leading [positions] axis on each.
  const auto S = static_cast<int64_t>(sender_names.size());
  const auto R = static_cast<int64_t>(receiver_names.size());
  const int64_t P = std::max<int64_t>(1, c.n_positions());
  at::Tensor scores = at::full({P, S, R}, NAN, at::kDouble);
  at::Tensor input_scores = at::full({P, R}, NAN, at::kDouble);
  double* sp = scores.data_ptr<double>();
  double* ip = input_scores.data_ptr<double>();
  for (const CircuitEdge& e : c.edges()) {
    const int64_t p = std::max<int64_t>(e.pos, 0);
    if (e.kind == CircuitEdge::Kind::residual) {
      sp[(p * S + e.sender) * R + e.receiver] = c.score(e);
    } else {
      ip[p * R + e.receiver] = c.score(e);
    }
  }
  if (!c.split()) {
    scores = scores.squeeze(0);
    input_scores = input_scores.squeeze(0);
  }

  std::vector<std::pair<std::string, std::string>> staged;  // (temporary, target)
  auto drop_staged = [&] {
    for (const auto& st : staged) std::remove(st.first.c_str());
  };
  try {
    core::write_text_file(f.json + ".new.tmp", json_text);
    staged.emplace_back(f.json + ".new.tmp", f.json);
    core::write_text_file(f.dot + ".new.tmp", circuit_dot(c, title));
    staged.emplace_back(f.dot + ".new.tmp", f.dot);
    core::H5File::write_atomically(f.h5 + ".new.tmp", [&](core::H5File& h) {
      h.write_attr("", "mechlab_format", kCircuitFormat);
      h.write_attr("", "mechlab_version", int64_t{1});
      h.ensure_group("circuit");
      h.write_tensor("circuit/kept_residual", c.kept_residual().to(at::kByte).contiguous());
      h.write_tensor("circuit/kept_head_input", c.kept_head_input().to(at::kByte).contiguous());
      h.write_tensor("circuit/scores", scores);
      h.write_tensor("circuit/head_input_scores", input_scores);
      h.write_attr("circuit", "senders", sender_names.dump());
      h.write_attr("circuit", "receivers", receiver_names.dump());
      h.write_attr("circuit", "json", json_text);
      if (c.split()) h.write_attr("circuit", "n_positions", c.n_positions());
    });
    staged.emplace_back(f.h5 + ".new.tmp", f.h5);
  } catch (...) {
    drop_staged();
    throw;
  }
  // The picture, from the staged DOT; a missing Graphviz is reported once
  // the data files are in place.
  std::string& draw_error = f.svg_error;
  if (options.svg()) {
    const std::string tmp = svg + ".new.tmp";
    const int rc = run_program({options.dot_program(), "-Tsvg", f.dot + ".new.tmp", "-o", tmp});
    if (rc == 0) {
      staged.emplace_back(tmp, svg);
      f.svg = svg;
    } else {
      std::remove(tmp.c_str());
      draw_error = rc == -ENOENT
                       ? str_cat("cannot draw ", svg, ": Graphviz's `", options.dot_program(),
                                 "` is not on PATH; install graphviz (apt-get install graphviz) and "
                                 "run `dot -Tsvg ", f.dot, " -o ", svg, "` (circuit.json, circuit.h5 "
                                 "and circuit.dot are written)")
                       : str_cat("cannot draw ", svg, ": `", options.dot_program(), " -Tsvg ", f.dot,
                                 "` failed (", rc < 0 ? std::strerror(-rc) : "exit " + std::to_string(rc),
                                 "); circuit.json, circuit.h5 and circuit.dot are written");
    }
  }
  for (const auto& [tmp, target] : staged) {
    if (std::rename(tmp.c_str(), target.c_str()) != 0) {
      const int err = errno;
      drop_staged();
      throw Error(str_cat("cannot write '", target, "': renaming '", tmp, "' onto it failed: ",
                          std::strerror(err)));
    }
  }
  // An older picture would show another circuit than the files beside it.
  if (f.svg.empty()) fs::remove(svg, ec);
  return f;
}

nlohmann::json read_circuit_document(const std::string& path) {
  std::ifstream in(path);
  MECHLAB_CHECK(in, "cannot read '", path, "': ", std::strerror(errno));
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str_cat(path, " is not valid JSON (", e.what(), "); delete it to run the job again"));
  }
  MECHLAB_CHECK(doc.is_object() && doc.value("mechlab_format", std::string()) == kCircuitFormat, path,
                " is not a mechlab circuit file (mechlab_format != \"circuit\")");
  return doc;
}

}  // namespace mechlab::discovery
