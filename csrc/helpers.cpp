// Index builders for the GPT dataset: loops over every sample that are too slow in Python.
//
// build_sample_index: walks the shuffled document order and records where each
//   fixed-length sample starts, as (position in document order, token offset).
// build_blending_indices: interleaves several datasets so that every prefix of the
//   blend follows the requested weights as closely as possible.
//
// The Python reference implementations that the tests compare against live in
// tests/reference_index.py.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace {

// Megatron's sample semantics: a sample holds seq_length + extra tokens and the next sample
// starts `extra` tokens before the previous one ended, so inputs and shifted labels both have
// seq_length tokens. Samples run across document boundaries.
template <typename DocT>
py::array_t<int64_t> sample_index_impl(const py::array_t<int32_t, py::array::c_style>& sizes_arr,
                                       const py::array_t<DocT, py::array::c_style>& docs_arr,
                                       int64_t seq_length, bool drop_last, int64_t extra) {
  if (seq_length < 1) throw std::invalid_argument("seq_length must be positive");
  if (extra < 0 || extra > 1) throw std::invalid_argument("extra token must be 0 or 1");
  const int32_t* sizes = sizes_arr.data();
  const int64_t n_sizes = sizes_arr.size();
  const DocT* docs = docs_arr.data();
  const int64_t n_docs = docs_arr.size();

  int64_t total = 0;
  for (int64_t i = 0; i < n_docs; ++i) {
    if (docs[i] < 0 || docs[i] >= n_sizes) throw std::out_of_range("document id out of range");
    total += sizes[docs[i]];
  }
  if (total <= extra) throw std::invalid_argument("not enough tokens for a single sample");
  const int64_t usable = total - extra;
  const int64_t n_samples = drop_last ? usable / seq_length : (usable + seq_length - 1) / seq_length;

  py::array_t<int64_t> out({n_samples + 1, static_cast<int64_t>(2)});
  int64_t* idx = out.mutable_data();
  {
    py::gil_scoped_release release;
    int64_t doc_pos = 0;  // position in the document order
    int64_t offset = 0;   // token offset inside that document
    idx[0] = 0;
    idx[1] = 0;
    for (int64_t s = 1; s <= n_samples; ++s) {
      int64_t remaining = seq_length + extra;
      while (remaining > 0) {
        const int64_t available = sizes[docs[doc_pos]] - offset;
        if (available >= remaining) {
          // The sample ends inside this document; the next starts `extra` tokens earlier.
          offset += remaining - extra;
          remaining = 0;
        } else if (doc_pos + 1 == n_docs) {
          // Out of documents: only the partial last sample (drop_last == false) gets here.
          offset = sizes[docs[doc_pos]] - extra;
          remaining = 0;
        } else {
          remaining -= available;
          ++doc_pos;
          offset = 0;
        }
      }
      idx[2 * s] = doc_pos;
      idx[2 * s + 1] = offset;
    }
  }
  return out;
}

py::array_t<int64_t> build_sample_index(py::array sizes, py::array docs, int64_t seq_length,
                                        bool drop_last, int64_t extra) {
  auto sizes32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(sizes);
  if (!sizes32) throw std::invalid_argument("sizes must be an integer array");
  if (py::isinstance<py::array_t<int32_t>>(docs)) {
    return sample_index_impl<int32_t>(
        sizes32, py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(docs),
        seq_length, drop_last, extra);
  }
  return sample_index_impl<int64_t>(
      sizes32, py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(docs),
      seq_length, drop_last, extra);
}

// Greedy, deterministic blending: sample i goes to the dataset that is furthest behind its
// target share weight * i. Returns (dataset id per sample, sample index inside that dataset).
py::tuple build_blending_indices(const py::array_t<double, py::array::c_style | py::array::forcecast>& w,
                                 int64_t size) {
  const int64_t n = w.size();
  if (n < 1 || n > 32767) throw std::invalid_argument("need between 1 and 32767 datasets");
  const double* weights = w.data();
  py::array_t<int16_t> dataset_index(size);
  py::array_t<int64_t> dataset_sample_index(size);
  int16_t* which = dataset_index.mutable_data();
  int64_t* local = dataset_sample_index.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<int64_t> taken(n, 0);
    for (int64_t i = 0; i < size; ++i) {
      const double target = std::max(static_cast<double>(i), 1.0);
      int64_t best = 0;
      double best_error = weights[0] * target - static_cast<double>(taken[0]);
      for (int64_t d = 1; d < n; ++d) {
        const double error = weights[d] * target - static_cast<double>(taken[d]);
        if (error > best_error) {
          best_error = error;
          best = d;
        }
      }
      which[i] = static_cast<int16_t>(best);
      local[i] = taken[best]++;
    }
  }
  return py::make_tuple(dataset_index, dataset_sample_index);
}

}  // namespace

PYBIND11_MODULE(_helpers, m) {
  m.doc() = "C++ index builders for megalite's GPT dataset";
  m.def("build_sample_index", &build_sample_index, py::arg("sizes"), py::arg("document_index"),
        py::arg("seq_length"), py::arg("drop_last"), py::arg("extra_token"));
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("size"));
}
