// Stack-walk target for C++ (built -O2 -fomit-frame-pointer as `unwind_cxx-nofp`): allocations
// reach operator new through libstdc++, which has no frame pointers. Commands on stdin:
//
//   vector   grow_vector: 1000 push_backs into a global std::vector<int>: 11 allocations via
//            std::vector::_M_realloc_insert, one live block of 4096 bytes
//   string   fill_string: a global std::string assigned 100 characters: one live block of
//            101 bytes, allocated inside libstdc++ (std::string::_M_create)
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static std::vector<int> numbers;
static std::string text;

__attribute__((noinline)) void grow_vector()
{
    for (int i = 0; i < 1000; i++)
        numbers.push_back(i);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void fill_string()
{
    text.assign(100, 'x');
    __asm__ volatile("" ::: "memory");
}

int main()
{
    setvbuf(stdout, nullptr, _IOLBF, 0);
    char command[64];
    std::printf("ready\n");
    while (std::fgets(command, sizeof command, stdin)) {
        command[std::strcspn(command, "\n")] = 0;
        if (!std::strcmp(command, "vector"))
            grow_vector();
        else if (!std::strcmp(command, "string"))
            fill_string();
        std::printf("done %s\n", command);
    }
    return 0;
}
