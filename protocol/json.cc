// Compiles Boost.JSON into this library (header-only mode), so the static agent needs no
// libboost_json and sanitizer builds instrument the parser too.
#include <boost/json/src.hpp>
